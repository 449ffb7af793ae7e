/* Test points: places where a crash or race test stops the process.
 *
 * Contract: cas_test_point(NAME) does nothing unless the environment
 * variable NBDCAS_TEST_STOP names it (a comma-separated list of names) (and, if NBDCAS_TEST_STOP_NTH=k is
 * set, only the k-th time it is reached).  Then it writes "NAME\n" to the FIFO
 * NBDCAS_TEST_STOP_FIFO (if set) and either blocks until killed, or, if
 * NBDCAS_TEST_RESUME_FIFO is set, until a line can be read from that FIFO
 * (a test that pauses garbage collection between two steps, does
 * something, and lets it go on); a "%s" in that path stands for NAME,
 * so that two points stopped at once are resumed one by one.  Costs a getenv when unused.
 *
 * Thread safety: any thread; the calling thread is the one that stops.
 */
#ifndef NBDCAS_TESTPOINT_H
#define NBDCAS_TESTPOINT_H

void cas_test_point (const char *name);

#endif /* NBDCAS_TESTPOINT_H */
