/* Preloaded into nbdkit under `make check-valgrind` only.
 *
 * nbdkit dlclose()s the plugin before it exits, and valgrind's leak
 * report, made after that, can no longer name the plugin's functions:
 * every frame of ours shows as "???".  Keeping the plugin mapped costs
 * nothing in a test run and makes the reports readable.
 */

int dlclose (void *handle);

int
dlclose (void *handle)
{
  (void) handle;
  return 0;
}
