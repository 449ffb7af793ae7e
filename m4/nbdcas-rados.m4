dnl NBDCAS_CHECK_RADOS: --with-rados=auto|yes|no, the Ceph RADOS chunk
dnl store (plugins/cas/chunkstore-rados.c).  librados-dev ships no
dnl pkg-config file, so look for the header and the library.
dnl   auto (default): build it when librados is found
dnl   yes: fail if it is not found
dnl   no: do not build it
dnl Sets RADOS_LIBS, defines HAVE_RADOS and the conditional HAVE_RADOS.
AC_DEFUN([NBDCAS_CHECK_RADOS], [
  AC_ARG_WITH([rados],
    [AS_HELP_STRING([--with-rados=auto|yes|no],
      [build the Ceph RADOS chunk store (needs librados-dev) @<:@default=auto@:>@])],
    [], [with_rados=auto])
  AS_CASE([$with_rados],
    [auto|yes|no], [],
    [AC_MSG_ERROR([--with-rados=$with_rados: expected auto, yes or no])])
  have_rados=no
  RADOS_LIBS=
  AS_IF([test "x$with_rados" != xno], [
    AC_CHECK_HEADER([rados/librados.h], [
      AC_CHECK_LIB([rados], [rados_aio_write_op_operate],
        [have_rados=yes; RADOS_LIBS=-lrados])])
    AS_IF([test "x$have_rados" = xno && test "x$with_rados" = xyes],
      [AC_MSG_ERROR([--with-rados=yes: librados not found: install the Debian package librados-dev])])
  ])
  AS_IF([test "x$have_rados" = xyes],
    [AC_DEFINE([HAVE_RADOS], [1], [Define to build the Ceph RADOS chunk store.])])
  AC_MSG_CHECKING([whether to build the Ceph RADOS chunk store])
  AC_MSG_RESULT([$have_rados])
  AC_SUBST([RADOS_LIBS])
  AM_CONDITIONAL([HAVE_RADOS], [test "x$have_rados" = xyes])
])
