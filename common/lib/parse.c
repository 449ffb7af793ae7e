/* Parameter parsing: see parse.h. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "backend.h"
#include "parse.h"

/* parse_size without the message: -1 if value is not a size. */
static int
size_value (const char *value, int64_t *r)
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
  return -1;
}

int
parse_size (const char *key, const char *value, int64_t *r)
{
  if (size_value (value, r) == 0)
    return 0;
  backend_error ("%s: cannot parse '%s': expected a size in bytes with an "
                 "optional K, M, G, T, P or E suffix (powers of 1024), "
                 "at most 8E", key, value ? value : "");
  errno = EINVAL;
  return -1;
}

void
format_size (int64_t n, char buf[32])
{
  static const char suffix[] = "KMGTPE";
  int i = -1;

  while (n != 0 && i < 5 && n % 1024 == 0) {
    n /= 1024;
    i++;
  }
  if (i < 0)
    snprintf (buf, 32, "%" PRIi64, n);
  else
    snprintf (buf, 32, "%" PRIi64 "%c", n, suffix[i]);
}

int
parse_size_range (const char *key, const char *value, int64_t min,
                  int64_t max, int64_t *r)
{
  char lo[32], hi[32];
  int64_t n;

  format_size (min, lo);
  format_size (max, hi);
  if (size_value (value, &n) == -1 || n < min || n > max) {
    backend_error ("%s=%s: must be a size from %s to %s (suffixes K, M, G, "
                   "T, P are powers of 1024)", key, value ? value : "", lo,
                   hi);
    errno = EINVAL;
    return -1;
  }
  *r = n;
  return 0;
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
    backend_error ("%s= must name a path (it is empty)", key);
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
