/* Parameter parsing shared by every backend and by minnbd.
 *
 * Each function names the parameter (key) in its error message, says what
 * is allowed, reports it with backend_error() and returns -1 with errno =
 * EINVAL.  Pure functions: thread-safe.
 */
#ifndef NBDCAS_PARSE_H
#define NBDCAS_PARSE_H

#include <stdbool.h>
#include <stdint.h>

/* "4096", "10G", "1.5M" is refused; suffixes K M G T P E (powers of 1024),
 * also "KiB"/"k"/"b" forms.  Result in [0, INT64_MAX].
 */
int parse_size (const char *key, const char *value, int64_t *r);
/* The same, limited to [min, max]; the message names the range (in the
 * units the user types: "from 1 to 1P").
 */
int parse_size_range (const char *key, const char *value, int64_t min,
                      int64_t max, int64_t *r);
/* "1P", "64K", "4097": the shortest exact spelling of n for messages. */
void format_size (int64_t n, char buf[32]);
/* 1/0, true/false, yes/no, on/off (any case). */
int parse_bool (const char *key, const char *value, bool *r);
/* Decimal unsigned integer in [min, max]. */
int parse_uint (const char *key, const char *value, uint64_t min,
                uint64_t max, uint64_t *r);

/* A path parameter, made absolute against the current directory (nbdkit
 * changes to / when it daemonizes, so a relative path would later name
 * something else).  Not resolved: the path need not exist yet.  *r is
 * malloc'ed; an empty value is refused.
 */
int parse_path (const char *key, const char *value, char **r);

#endif /* NBDCAS_PARSE_H */
