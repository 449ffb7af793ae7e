/* Parameter parsing: see parse.h. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "backend.h"
#include "parse.h"

int
parse_size (const char *key, const char *value, int64_t *r)
{
  char *end;
  unsigned long long n;
  int shift = 0;

  if (value == NULL || !isdigit ((unsigned char) value[0]))
    goto bad;
  errno = 0;
  n = strtoull (value, &end, 10);
  if (errno != 0)
    goto bad;
  switch (*end) {
  case '\0': break;
  case 'b': case 'B': shift = 0; end++; break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  case 'p': case 'P': shift = 50; end++; break;
  case 'e': case 'E': shift = 60; end++; break;
  default: goto bad;
  }
  if (shift > 0 && (strcasecmp (end, "iB") == 0 || strcasecmp (end, "B") == 0))
    end += strlen (end);
  if (*end != '\0')
    goto bad;
  if (n > (unsigned long long) INT64_MAX >> shift)
    goto bad;
  *r = (int64_t) (n << shift);
  return 0;

 bad:
  backend_error ("%s: cannot parse '%s': expected a size in bytes with an "
                 "optional K, M, G, T, P or E suffix (powers of 1024), "
                 "at most 8E", key, value ? value : "");
  errno = EINVAL;
  return -1;
}

int
parse_bool (const char *key, const char *value, bool *r)
{
  static const char *const yes[] = { "1", "true", "yes", "on" };
  static const char *const no[] = { "0", "false", "no", "off" };
  size_t i;

  for (i = 0; value && i < sizeof yes / sizeof yes[0]; i++) {
    if (strcasecmp (value, yes[i]) == 0) { *r = true; return 0; }
    if (strcasecmp (value, no[i]) == 0) { *r = false; return 0; }
  }
  backend_error ("%s: cannot parse '%s': expected a boolean "
                 "(true/false, yes/no, on/off, 1/0)", key, value ? value : "");
  errno = EINVAL;
  return -1;
}

int
parse_uint (const char *key, const char *value, uint64_t min, uint64_t max,
            uint64_t *r)
{
  char *end;
  unsigned long long n;

  if (value == NULL || !isdigit ((unsigned char) value[0]))
    goto bad;
  errno = 0;
  n = strtoull (value, &end, 10);
  if (errno != 0 || *end != '\0' || n < min || n > max)
    goto bad;
  *r = n;
  return 0;

 bad:
  backend_error ("%s: cannot parse '%s': expected an integer from %llu to %llu",
                 key, value ? value : "",
                 (unsigned long long) min, (unsigned long long) max);
  errno = EINVAL;
  return -1;
}

int
parse_path (const char *key, const char *value, char **r)
{
  char *cwd;

  if (value == NULL || value[0] == '\0') {
    backend_error ("%s: must name a path (it is empty)", key);
    errno = EINVAL;
    return -1;
  }
  if (value[0] == '/') {
    *r = strdup (value);
    return *r ? 0 : -1;
  }
  cwd = getcwd (NULL, 0);
  if (cwd == NULL) {
    backend_error ("%s=%s: cannot make the path absolute: getcwd: %m", key,
                   value);
    return -1;
  }
  if (asprintf (r, "%s%s%s", cwd, strcmp (cwd, "/") ? "/" : "", value) == -1) {
    *r = NULL;
    free (cwd);
    return -1;
  }
  free (cwd);
  return 0;
}
