/* minnbd's common/server/exports.c, compiled here for the replay programs
 * (automake cannot name a source outside this directory cleanly).
 */
#include "../common/server/exports.c"
