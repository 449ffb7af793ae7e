/* minnbd's common/server/handshake.c, compiled here for the replay programs
 * (automake cannot name a source outside this directory cleanly).
 */
#include "../common/server/handshake.c"
