/* minnbd: command line, backend configuration, daemonizing, signals and
 * the captive --run mode: minnbd_main(), called by the program's main()
 * (main.c), which also links the backends it serves (backends.h).  The
 * protocol lives in handshake.c / conn.c / requests.c; sockets in
 * listen.c.
 *
 * Threads: main() is single-threaded until the first connection thread
 * starts (the backend's load/config/config_complete run before that, and
 * before any fork).  Signals are handled on the main thread only: the
 * handlers set a flag and write to the wake-up pipe that listen_loop
 * polls.  Every other thread blocks them.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "backends.h"
#include "nbd-protocol.h"
#include "parse.h"
#include "server.h"

struct options opts = {
  .threads = DEFAULT_THREADS,
  .max_connections = DEFAULT_MAX_CONNECTIONS,
  .handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT,
};
const struct backend *B;
const char *progname = "minnbd";
atomic_bool shutting_down;

static pid_t run_pid;           /* the --run command, 0 when none/done */
static int run_status = -1;     /* its exit code once reaped */

enum {
  OPT_RUN = 256, OPT_EXIT_WITH_PARENT, OPT_HELP, OPT_MAX_CONNECTIONS,
  OPT_HANDSHAKE_TIMEOUT, OPT_TLS, OPT_TLS_CERTIFICATES, OPT_TLS_PSK,
  OPT_TLS_VERIFY_PEER, OPT_ALLOW, OPT_LOG,
};

static const char short_opts[] = "+U:p:i:srfe:D:t:P:vV";
static const struct option long_opts[] = {
  { "unix", required_argument, NULL, 'U' },
  { "port", required_argument, NULL, 'p' },
  { "ipaddr", required_argument, NULL, 'i' },
  { "single", no_argument, NULL, 's' },
  { "readonly", no_argument, NULL, 'r' },
  { "read-only", no_argument, NULL, 'r' },
  { "foreground", no_argument, NULL, 'f' },
  { "export-name", required_argument, NULL, 'e' },
  { "export", required_argument, NULL, 'e' },
  { "description", required_argument, NULL, 'D' },
  { "threads", required_argument, NULL, 't' },
  { "pidfile", required_argument, NULL, 'P' },
  { "verbose", no_argument, NULL, 'v' },
  { "version", no_argument, NULL, 'V' },
  { "run", required_argument, NULL, OPT_RUN },
  { "exit-with-parent", no_argument, NULL, OPT_EXIT_WITH_PARENT },
  { "help", no_argument, NULL, OPT_HELP },
  { "max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS },
  { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
  { "tls", required_argument, NULL, OPT_TLS },
  { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
  { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
  { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY_PEER },
  { "allow", required_argument, NULL, OPT_ALLOW },
  { "log", required_argument, NULL, OPT_LOG },
  { NULL, 0, NULL, 0 },
};

static void
usage (FILE *f)
{
  fprintf (f,
"usage: minnbd [-U SOCKET | -p PORT [-i ADDR] | -s] [-r] [-f] [-e EXPORT]\n"
"              [-D DESCRIPTION] [-t THREADS] [-P PIDFILE] [-v]\n"
"              [--max-connections N] [--handshake-timeout SECONDS]\n"
"              [--tls=off|on|require] [--tls-certificates DIR]\n"
"              [--tls-psk FILE] [--tls-verify-peer] [--allow ADDR[/PREFIX]]\n"
"              [--log=stderr|syslog]\n"
"              [--run CMD] [--exit-with-parent] BACKEND [key=value...]\n"
"       minnbd --help | --version\n");
}

static void
help (void)
{
  const struct backend *b;
  size_t i;

  usage (stdout);
  printf (
"\n"
"Serve a disk over NBD with one of the backends linked into minnbd.\n"
"\n"
"  -U, --unix SOCKET      listen on a Unix socket (\"-\": a private one)\n"
"  -p, --port PORT        listen on TCP PORT (default 10809)\n"
"  -i, --ipaddr ADDR      listen on this address only (IPv4 or IPv6)\n"
"  -s, --single           serve one client on stdin/stdout\n"
"  -r, --readonly         read-only export\n"
"  -f, --foreground       do not fork into the background\n"
"  -e, --export-name NAME name of the single export (default \"\")\n"
"  -D, --description TEXT description shown by NBD_OPT_LIST / INFO\n"
"  -t, --threads N        worker threads per connection (default %d)\n"
"  -P, --pidfile FILE     write the server's pid to FILE\n"
"      --max-connections N  serve at most N clients at once; more are\n"
"                         closed at once (default %d, 0: no limit)\n"
"      --handshake-timeout SECONDS  close a client that has not chosen\n"
"                         an export after SECONDS (default %d, 0: never)\n"
"      --tls=off|on|require  offer TLS (NBD_OPT_STARTTLS), or require it\n"
"                         (default off)\n"
"      --tls-certificates DIR  X.509: DIR/server-cert.pem, server-key.pem\n"
"                         (and ca-cert.pem for --tls-verify-peer)\n"
"      --tls-psk FILE     pre-shared keys, identity:hexkey lines (psktool)\n"
"      --tls-verify-peer  require a client certificate signed by the CA\n"
"      --allow ADDR[/PREFIX]  accept TCP clients from these addresses only\n"
"                         (repeatable; IPv4 or IPv6)\n"
"      --log=stderr|syslog  where messages go (default: syslog in the\n"
"                         background, stderr otherwise)\n"
"  -v, --verbose          debug messages on stderr\n"
"      --run CMD          run CMD ($uri $nbd $unixsocket $port set), then\n"
"                         exit with its status\n"
"      --exit-with-parent exit when the parent process exits\n"
"  -V, --version          print the version and exit\n"
"\n"
"Socket activation: with LISTEN_PID=<pid> and LISTEN_FDS=N in the\n"
"environment minnbd serves the sockets on fds 3..3+N-1.\n"
"\n"
"Backends:\n", DEFAULT_THREADS, DEFAULT_MAX_CONNECTIONS,
          DEFAULT_HANDSHAKE_TIMEOUT);
  for (i = 0; (b = backend_nth (i)) != NULL; i++) {
    printf ("\n  %s", b->name);
    if (b->longname)
      printf (" - %s", b->longname);
    printf ("\n");
    if (b->description)
      printf ("    %s\n", b->description);
    if (b->config_help) {
      const char *p = b->config_help, *nl;

      do {
        nl = strchr (p, '\n');
        printf ("    %.*s\n", nl ? (int) (nl - p) : (int) strlen (p), p);
        p = nl ? nl + 1 : NULL;
      } while (p && *p);
    }
  }
}

static void __attribute__ ((noreturn, format (printf, 1, 2)))
bad_usage (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "%s: ", progname);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  usage (stderr);
  exit (1);
}

/* Signals. */

static void
on_terminate (int sig)
{
  atomic_store (&shutting_down, true);
  wake_main ();
}

static void
on_child (int sig)
{
  wake_main ();
}

static void
on_usr1 (int sig)
{
  /* Only here to interrupt a blocked read(): see listen.c. */
}

static void
setup_signals (void)
{
  struct sigaction sa = { 0 };

  sa.sa_handler = SIG_IGN;
  sigaction (SIGPIPE, &sa, NULL);
  sa.sa_handler = on_terminate;
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction (SIGCHLD, &sa, NULL);
  sa.sa_handler = on_usr1;
  sa.sa_flags = 0;              /* no SA_RESTART: read() must return */
  sigaction (SIGUSR1, &sa, NULL);
}

void
check_children (void)
{
  int status;

  if (run_pid > 0 && waitpid (run_pid, &status, WNOHANG) == run_pid) {
    if (WIFEXITED (status))
      run_status = WEXITSTATUS (status);
    else if (WIFSIGNALED (status)) {
      log_error ("--run command killed by signal %d", WTERMSIG (status));
      run_status = 128 + WTERMSIG (status);
    }
    else
      run_status = 1;
    run_pid = 0;
    debug ("--run command exited with status %d", run_status);
    atomic_store (&shutting_down, true);
  }
}

/* --run */

/* Percent-encode an export name for an NBD URI path. */
static char *
uri_escape (const char *s)
{
  static const char hex[] = "0123456789ABCDEF";
  char *out = malloc (3 * strlen (s) + 1), *p = out;

  if (out == NULL)
    return NULL;
  for (; *s; s++) {
    unsigned char ch = *s;

    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr ("-._~", ch))
      *p++ = ch;
    else {
      *p++ = '%';
      *p++ = hex[ch >> 4];
      *p++ = hex[ch & 15];
    }
  }
  *p = '\0';
  return out;
}

static pid_t
run_command (const char *unix_path, int port)
{
  const char *name = opts.export_name ? opts.export_name : "";
  char *esc = uri_escape (name);
  char *uri = NULL, *nbd = NULL, portstr[16];
  pid_t pid;

  if (esc == NULL)
    return -1;
  if (unix_path) {
    if (asprintf (&uri, "nbd+unix:///%s?socket=%s", esc, unix_path) == -1 ||
        asprintf (&nbd, "nbd:unix:%s%s%s", unix_path,
                  *name ? ":exportname=" : "", name) == -1)
      return -1;
  }
  else {
    const char *host = opts.ipaddr ? opts.ipaddr : "localhost";
    bool v6 = strchr (host, ':') != NULL;

    if (asprintf (&uri, "nbd://%s%s%s:%d/%s", v6 ? "[" : "", host,
                  v6 ? "]" : "", port, esc) == -1 ||
        asprintf (&nbd, "nbd:%s%s%s:%d%s%s", v6 ? "[" : "", host,
                  v6 ? "]" : "", port, *name ? ":exportname=" : "",
                  name) == -1)
      return -1;
  }
  snprintf (portstr, sizeof portstr, "%d", port);
  free (esc);

  pid = fork ();
  if (pid == -1) {
    log_error ("fork: %m");
    return -1;
  }
  if (pid == 0) {
    sigset_t none;
    struct sigaction sa = { .sa_handler = SIG_DFL };

    sigaction (SIGPIPE, &sa, NULL);
    sigaction (SIGTERM, &sa, NULL);
    sigaction (SIGINT, &sa, NULL);
    sigaction (SIGHUP, &sa, NULL);
    sigaction (SIGCHLD, &sa, NULL);
    sigaction (SIGUSR1, &sa, NULL);
    sigemptyset (&none);
    sigprocmask (SIG_SETMASK, &none, NULL);
    setenv ("uri", uri, 1);
    setenv ("nbd", nbd, 1);
    if (unix_path) {
      setenv ("unixsocket", unix_path, 1);
      unsetenv ("port");
    }
    else {
      setenv ("port", portstr, 1);
      unsetenv ("unixsocket");
    }
    execl ("/bin/sh", "sh", "-c", opts.run, (char *) NULL);
    perror ("minnbd: --run: /bin/sh");
    _exit (127);
  }
  free (uri);
  free (nbd);
  return pid;
}

/* Daemon: the parent exits 0 only once the child listens and wrote its
 * pidfile, so "minnbd -U sock ...; nbdinfo ..." works without polling.
 */
static int
daemonize (void)
{
  int pfd[2];
  pid_t pid;
  int fd;
  bool keep_stderr;

  if (pipe2 (pfd, O_CLOEXEC) == -1)
    return -1;
  pid = fork ();
  if (pid == -1)
    return -1;
  if (pid > 0) {
    char b;
    ssize_t r;

    close (pfd[1]);
    do
      r = read (pfd[0], &b, 1);
    while (r == -1 && errno == EINTR);
    _exit (r == 1 ? 0 : 1);
  }
  close (pfd[0]);
  setsid ();
  /* As nbdkit does: a daemon keeps no directory busy.  Every path was
   * made absolute when it was parsed (-U, -P, the backends' parameters).
   */
  if (chdir ("/") == -1)
    log_error ("chdir /: %m");
  /* A daemon keeps no terminal or pipe of its caller open (a caller
   * reading our output would wait forever); messages go to syslog.
   */
  fd = open ("/dev/null", O_RDWR);
  /* --log=default: syslog, except that -v keeps standard error. */
  keep_stderr = opts.log_to == LOG_TO_STDERR ||
    (opts.log_to == LOG_TO_DEFAULT && opts.verbose);
  if (fd >= 0) {
    dup2 (fd, 0);
    dup2 (fd, 1);
    if (!keep_stderr)
      dup2 (fd, 2);
    if (fd > 2)
      close (fd);
  }
  if (opts.log_to == LOG_TO_DEFAULT && !keep_stderr)
    log_to_syslog ();
  return pfd[1];
}

static int
write_pidfile (const char *path)
{
  FILE *f = fopen (path, "w");

  if (f == NULL || fprintf (f, "%d\n", (int) getpid ()) < 0 ||
      fclose (f) == EOF) {
    log_error ("-P %s: %m", path);
    return -1;
  }
  return 0;
}

/* Each connection holds a descriptor, and the soft limit on them is
 * often 1024, kept low only for programs using select(): minnbd polls,
 * so it raises its soft limit to the hard one (as systemd suggests for
 * servers).  Whatever the limit, running out only pauses accepting.
 */
static void
raise_nofile_limit (void)
{
  struct rlimit rl;

  if (getrlimit (RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur >= rl.rlim_max)
    return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;
  if (setrlimit (RLIMIT_NOFILE, &rl) == -1)
    debug ("cannot raise the open files limit: %m");
}

static bool
fd_is_socket (int fd)
{
  struct stat st;

  return fstat (fd, &st) == 0 && S_ISSOCK (st.st_mode);
}

static void
configure_backend (int argc, char **argv)
{
  int i;

  if (B->load)
    B->load ();
  for (i = 0; i < argc; i++) {
    char *eq = strchr (argv[i], '=');
    char *key;

    if (eq == NULL || eq == argv[i])
      bad_usage ("'%s': backend parameters must be key=value", argv[i]);
    key = strndup (argv[i], eq - argv[i]);
    if (key == NULL) {
      perror (progname);
      exit (1);
    }
    backend_error_clear ();
    errno = 0;
    if (B->config (key, eq + 1) == -1) {
      if (backend_error_message () == NULL)
        log_error ("%s: %s: %s", B->name, argv[i],
                   errno ? strerror (errno) : "invalid parameter");
      exit (1);
    }
    free (key);
  }
  backend_error_clear ();
  errno = 0;
  if (B->config_complete && B->config_complete () == -1) {
    if (backend_error_message () == NULL)
      log_error ("%s: %s", B->name,
                 errno ? strerror (errno) : "configuration incomplete");
    exit (1);
  }
}

int
minnbd_main (int argc, char **argv)
{
  int c, nfds, port = 0, wake[2], ready_fd = -1;
  int *fds = NULL;
  char *unix_path = NULL, *tmpdir = NULL;
  char *unix_socket_abs = NULL, *pidfile_abs = NULL;
  char *tls_certificates_abs = NULL, *tls_psk_abs = NULL;
  uint64_t u;
  pid_t parent = getppid ();
  bool activated;

  /* First of all: a supervisor may stop us while we are still starting,
   * and that must be a clean exit, not death by SIGTERM.
   */
  setup_signals ();

  while ((c = getopt_long (argc, argv, short_opts, long_opts, NULL)) != -1) {
    switch (c) {
    case 'U':
      /* An empty path would bind Linux's abstract namespace: a socket no
       * client can name.
       */
      if (optarg[0] == '\0')
        bad_usage ("-U: empty socket path: give a path, or - for a private one");
      /* Absolute: a daemon runs in / (and removes the socket on exit). */
      free (unix_socket_abs);
      unix_socket_abs = NULL;
      if (strcmp (optarg, "-") == 0)
        opts.unix_socket = optarg;
      else if (parse_path ("-U", optarg, &unix_socket_abs) == -1)
        exit (1);
      else
        opts.unix_socket = unix_socket_abs;
      break;
    case 'p':
      if (parse_uint ("-p", optarg, 0, 65535, &u) == -1)
        exit (1);
      opts.port = optarg;
      break;
    case 'i': opts.ipaddr = optarg; break;
    case 's': opts.single = true; break;
    case 'r': opts.readonly = true; break;
    case 'f': opts.foreground = true; break;
    case 'e':
      if (strlen (optarg) > NBD_MAX_STRING)
        bad_usage ("-e: export name longer than 4096 bytes");
      opts.export_name = optarg;
      break;
    case 'D':
      if (strlen (optarg) > NBD_MAX_STRING)
        bad_usage ("-D: description longer than 4096 bytes");
      opts.description = optarg;
      break;
    case 't':
      if (parse_uint ("-t", optarg, 1, MAX_THREADS, &u) == -1)
        exit (1);
      opts.threads = u;
      break;
    case 'P':
      free (pidfile_abs);
      if (parse_path ("-P", optarg, &pidfile_abs) == -1)
        exit (1);
      opts.pidfile = pidfile_abs;
      break;
    case 'v': opts.verbose = true; break;
    case 'V': printf ("minnbd %s\n", PACKAGE_VERSION); exit (0);
    case OPT_RUN: opts.run = optarg; break;
    case OPT_EXIT_WITH_PARENT: opts.exit_with_parent = true; break;
    case OPT_HELP: help (); exit (0);
    case OPT_MAX_CONNECTIONS:
      if (parse_uint ("--max-connections", optarg, 0, 1000000, &u) == -1)
        exit (1);
      opts.max_connections = u;
      break;
    case OPT_TLS:
      if (strcmp (optarg, "off") == 0) opts.tls = TLS_OFF;
      else if (strcmp (optarg, "on") == 0) opts.tls = TLS_ON;
      else if (strcmp (optarg, "require") == 0) opts.tls = TLS_REQUIRE;
      else
        bad_usage ("--tls=%s: expected off, on or require", optarg);
      break;
    case OPT_TLS_CERTIFICATES:
      free (tls_certificates_abs);
      if (parse_path ("--tls-certificates", optarg,
                      &tls_certificates_abs) == -1)
        exit (1);
      opts.tls_certificates = tls_certificates_abs;
      break;
    case OPT_TLS_PSK:
      free (tls_psk_abs);
      if (parse_path ("--tls-psk", optarg, &tls_psk_abs) == -1)
        exit (1);
      opts.tls_psk = tls_psk_abs;
      break;
    case OPT_TLS_VERIFY_PEER: opts.tls_verify_peer = true; break;
    case OPT_ALLOW:
      if (allow_add (optarg) == -1)
        exit (1);
      break;
    case OPT_LOG:
      if (strcmp (optarg, "stderr") == 0) opts.log_to = LOG_TO_STDERR;
      else if (strcmp (optarg, "syslog") == 0) opts.log_to = LOG_TO_SYSLOG;
      else if (strcmp (optarg, "default") == 0) opts.log_to = LOG_TO_DEFAULT;
      else
        bad_usage ("--log=%s: expected stderr or syslog", optarg);
      break;
    case OPT_HANDSHAKE_TIMEOUT:
      if (parse_uint ("--handshake-timeout", optarg, 0, 86400, &u) == -1)
        exit (1);
      opts.handshake_timeout = u;
      break;
    default: usage (stderr); exit (1);
    }
  }
  if (optind >= argc)
    bad_usage ("missing BACKEND (see --help for the list)");
  B = backend_lookup (argv[optind]);
  if (B == NULL) {
    const struct backend *b;
    size_t i;

    fprintf (stderr, "%s: unknown backend '%s'; available:", progname,
             argv[optind]);
    for (i = 0; (b = backend_nth (i)) != NULL; i++)
      fprintf (stderr, " %s", b->name);
    fprintf (stderr, "\n");
    exit (1);
  }
  if (opts.single && (opts.unix_socket || opts.port || opts.run))
    bad_usage ("-s cannot be combined with -U, -p or --run");
  if (opts.unix_socket && opts.port)
    bad_usage ("-U and -p are alternatives: give one");
  if (opts.ipaddr && opts.unix_socket)
    bad_usage ("-i only applies to TCP (-p), not to -U");
  if (opts.run && !opts.unix_socket && !opts.port)
    opts.unix_socket = "-";

  if (opts.log_to == LOG_TO_SYSLOG)
    log_to_syslog ();
  raise_nofile_limit ();
  /* Credentials are read (and a readable key refused) before the
   * backend opens anything or minnbd forks.
   */
  if (tls_setup () == -1)
    exit (1);
  configure_backend (argc - optind - 1, argv + optind + 1);
  if (atomic_load (&shutting_down)) {
    if (B->unload)
      B->unload ();
    return 0;
  }

  if (pipe2 (wake, O_CLOEXEC | O_NONBLOCK) == -1) {
    log_error ("pipe: %m");
    exit (1);
  }
  set_wake_fd (wake[1]);

  nfds = listen_setup (&fds, &unix_path, &tmpdir, &port);
  if (nfds == -1)
    exit (1);
  activated = listen_activated;

  if (!opts.foreground && !opts.single && !opts.run && !activated &&
      !opts.exit_with_parent) {
    ready_fd = daemonize ();
    if (ready_fd == -1) {
      log_error ("cannot fork into the background: %m");
      exit (1);
    }
  }
  if (opts.pidfile && write_pidfile (opts.pidfile) == -1)
    exit (1);
  if (opts.exit_with_parent) {
    prctl (PR_SET_PDEATHSIG, SIGTERM);
    if (getppid () != parent)
      atomic_store (&shutting_down, true);
  }
  /* The serving process: the backend may start its threads now. */
  if (B->after_fork && B->after_fork () == -1)
    exit (1);                   /* the backend said why */
  if (ready_fd >= 0) {
    ssize_t r = write (ready_fd, "", 1);

    (void) r;
    close (ready_fd);
  }
  if (unix_path)
    debug ("listening on %s", unix_path);
  else if (nfds > 0)
    debug ("listening on %d socket(s)%s%d", nfds, port ? ", port " : "",
           port);

  if (opts.run) {
    run_pid = run_command (unix_path, port);
    if (run_pid == -1)
      atomic_store (&shutting_down, true);
  }
  if (opts.single &&
      start_connection (0, 1, fd_is_socket (0)) == -1) {
    log_error ("cannot start the connection thread: %m");
    exit (1);
  }

  listen_loop (fds, nfds, wake[0]);

  if (unix_path && (tmpdir || opts.unix_socket))
    unlink (unix_path);
  if (tmpdir)
    rmdir (tmpdir);
  free (unix_path);
  free (tmpdir);
  free (fds);
  free (unix_socket_abs);
  free (pidfile_abs);
  free (tls_certificates_abs);
  free (tls_psk_abs);
  tls_free ();
  allow_free ();
  if (B->unload)
    B->unload ();
  debug ("exiting");

  if (opts.run) {
    /* Shut down by a signal while CMD still runs: wait for nothing, the
     * command keeps its own life, as with nbdkit.
     */
    check_children ();
    return run_status >= 0 ? run_status : 1;
  }
  return 0;
}
