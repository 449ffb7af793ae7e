/* A per-thread hook for the messages a backend reports.
 *
 * Contract: while backend_message_hook is set in a thread, the front end's
 * backend_error and backend_debug pass that thread's messages to it
 * (formatted, error true for backend_error) instead of logging them.  A
 * server that runs an admin command for a remote nbdcas (the cas control
 * socket) uses it to send the store's messages to that nbdcas's stderr.
 *
 * Thread safety: the hook is thread-local; setting it affects only the
 * calling thread.
 */
#ifndef NBDCAS_MSGHOOK_H
#define NBDCAS_MSGHOOK_H

#include <stdbool.h>

typedef void (*backend_message_fn) (bool error, const char *msg);
extern __thread backend_message_fn backend_message_hook;

#endif /* NBDCAS_MSGHOOK_H */
