/* The control socket of a served store (control.c; the protocol is in
 * control-proto.h and FORMAT.md): the server holding a store for writing
 * runs nbdcas commands on it for the store's owner.
 *
 * Lifecycle: cas_control_open binds DIR/control.sock (at config time,
 * before a server forks), cas_control_start starts the thread that serves
 * it (after the fork), cas_control_close stops it and removes the socket.
 * Single-threaded callers; the thread runs one command at a time.
 */
#ifndef NBDCAS_CONTROL_H
#define NBDCAS_CONTROL_H

#include "store.h"

struct cas_control;

/* NULL with errno set and a message on failure. */
struct cas_control *cas_control_open (struct cas_store *st);
int cas_control_start (struct cas_control *c);
void cas_control_close (struct cas_control *c);

#endif /* NBDCAS_CONTROL_H */
