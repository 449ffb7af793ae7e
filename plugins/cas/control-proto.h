/* The control socket protocol between nbdcas and a server holding a store
 * (FORMAT.md, "The control socket").  Shared by the client (tool/remote.c)
 * and the server (control.c).
 *
 * DIR/control.sock is a Unix stream socket, mode 0600, made by a server
 * that has the store open for writing; the server checks that the peer
 * runs as its own user (or root).  One request per connection:
 *
 *   client -> server: the request header (below), sent with SCM_RIGHTS
 *     carrying 4 file descriptors -- the client's stdin, stdout, stderr,
 *     and its working directory (O_PATH) -- then `length` bytes of argv:
 *     `argc` strings, each ending in NUL.
 *   The server runs `nbdcas argv...` on the store it holds, writing to
 *   the client's stdout and stderr, opening relative paths from the
 *   client's directory.
 *   server -> client: the reply header, with the exit status.
 *
 * Every integer is little-endian.  A server that does not speak the
 * client's version replies with status CONTROL_STATUS_VERSION (and says
 * so on the client's stderr).
 */
#ifndef NBDCAS_CONTROL_PROTO_H
#define NBDCAS_CONTROL_PROTO_H

#define CONTROL_SOCKET "control.sock"
#define CONTROL_MAGIC "NBDCASCT"
#define CONTROL_VERSION 1
#define CONTROL_NFDS 4                 /* stdin, stdout, stderr, cwd */
#define CONTROL_MAX_ARGC 256
#define CONTROL_MAX_LENGTH 65536       /* bytes of argv strings */
#define CONTROL_STATUS_VERSION 2       /* = EXIT_USAGE */
/* The server drops a client whose whole request has not arrived within
 * this many seconds of its connection (it serves one at a time).
 */
#define CONTROL_REQUEST_TIMEOUT 10

/* Request: magic[8] version[4] flags[4] (0) argc[4] length[4]. */
#define CONTROL_REQUEST_SIZE 24
/* Reply: magic[8] version[4] status[4] (a signed exit status). */
#define CONTROL_REPLY_SIZE 16

#endif /* NBDCAS_CONTROL_PROTO_H */
