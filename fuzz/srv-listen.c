/* minnbd's common/server/listen.c, compiled here for the replay programs
 * (automake cannot name a source outside this directory cleanly).
 */
#include "../common/server/listen.c"
