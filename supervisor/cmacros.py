"""The C library's macros that a name bindgen generates could be.

bindgen's upper-case names (an enumerant's COLOR_RED, a method's ordinal
STORE_GET, STORE_ID, POINT_DWORDS) live beside the macros of every header a
plugin includes, and a header included *after* the bindings redefines one
without a word (the C library's headers are system headers: no warning):
`enum Log { info @0; }`, `enum Path { max @0; }`, `enum Seek { set @0; data
@1; }` or `enum Int { max @0; }` gave LOG_INFO, PATH_MAX, SEEK_DATA, INT_MAX,
which a plugin's `#include <limits.h>` or <stdio.h> below the bindings turned
into the C library's values: the plugin sent 4096 for Path.max, 2147483647 for
Int.max, and the compiler said nothing.  bindgen refuses such a name
(`_reserved`), naming a header that defines it.

MACROS: every upper-case macro with an underscore (the only shape of a
generated upper-case name) that the C library's public headers define for
wasm32-wasi (wasi-libc's and clang's: the C17 and POSIX headers bindgen knows,
sys/*.h, netinet/in.h and netinet/tcp.h; with and without _GNU_SOURCE and the
_WASI_EMULATED_* features), each with the most specific header that defines
it.  Made from the toolchain by `python -m supervisor.cmacros` (which prints
the table below); tests/integration/test_bindgen.py checks that the installed
toolchain defines none it does not hold.

LOWER: every lower-case object-like macro of the same headers (`st_mtime`,
`no_argument`, `stdout`), which a field, struct or enum bindgen names so would
be; made by `python -m supervisor.cmacros --lower`, checked the same way.
"""
from __future__ import annotations

import collections
import os
import re
import subprocess

#: Headers beyond bindgen._C_HEADERS (and every sys/*.h)
EXTRA_HEADERS = ("netinet/in.h", "netinet/tcp.h")
FEATURES = ("-D_WASI_EMULATED_SIGNAL", "-D_WASI_EMULATED_PROCESS_CLOCKS",
            "-D_WASI_EMULATED_MMAN", "-D_WASI_EMULATED_GETPID")
_SHAPE = re.compile(r"#define ([A-Z][A-Z0-9]*_[A-Z0-9_]*)\b")
#: A lower-case object-like macro (`#define st_mtime st_mtim.tv_sec`, `#define
#: no_argument 0`): the shape of a field's, a struct's, an enum's or a function's
#: generated name (not a function-like one, `NAME(`, which only a call expands)
_LOWER_SHAPE = re.compile(r"#define ([a-z][a-z0-9_]*)(?![\w(])")


def from_toolchain(clang: str, c_headers, shape=_SHAPE) -> dict[str, str]:
    """{macro: header} as the installed wasm32-wasi toolchain defines them: the
    public header whose own text defines it, or else the one with fewest macros
    that defines it (SEEK_SET is wasi-libc's __seek.h's, which stdio.h includes).
    `shape`: which macros (_SHAPE, or _LOWER_SHAPE for LOWER's)."""
    def run(*args, source=""):
        return subprocess.run([clang, "--target=wasm32-wasi", *args], input=source,
                              capture_output=True, text=True)
    own = set(shape.findall(run("-dM", "-E", "-x", "c", "-", *FEATURES).stdout))
    # where the C library's headers are: clang's own, then wasi-libc's (Debian's)
    resource = run("-print-resource-dir").stdout.strip()
    roots = [os.path.join(resource, "include")] if resource else []
    roots += [line.strip() for line in run("-E", "-v", "-x", "c", "-").stderr.splitlines()
              if line.startswith(" /") and os.path.isdir(line.strip())]
    roots = sorted(set(roots), key=len, reverse=True)
    headers = set(c_headers) | set(EXTRA_HEADERS)
    for root in roots:
        if os.path.isdir(os.path.join(root, "sys")):
            headers |= {f"sys/{f}" for f in os.listdir(os.path.join(root, "sys"))
                        if f.endswith(".h")}
    defined: dict[str, set[str]] = collections.defaultdict(set)
    home: dict[str, str] = {}
    for extra in ((), ("-D_GNU_SOURCE",)):
        for header in sorted(headers):
            r = run("-dD", "-E", "-x", "c", "-", *FEATURES, *extra,
                    source=f"#include <{header}>\n")
            if r.returncode:
                continue            # not wasi-libc's (or not without what it needs)
            current = ""
            for line in r.stdout.splitlines():
                mark = re.match(r'# \d+ "([^"]*)"', line)
                if mark:
                    current = next((os.path.relpath(mark.group(1), root) for root in roots
                                    if mark.group(1).startswith(root + "/")), "")
                    # wasi-libc's __header_netinet_in.h is netinet/in.h's own text
                    body = os.path.basename(current)
                    if body.startswith("__header_"):
                        current = next((h for h in headers if h[:-2].replace("/", "_")
                                        == body[len("__header_"):-2]), current)
                    continue
                m = shape.match(line)
                if m and m.group(1) not in own:
                    defined[m.group(1)].add(header)
                    if current in headers:
                        home.setdefault(m.group(1), current)
    size = collections.Counter(h for hs in defined.values() for h in hs)
    return {name: home.get(name) or min(hs, key=lambda h: (size[h], h))
            for name, hs in defined.items()}


def _table(macros: dict[str, str]) -> str:
    by_header: dict[str, list[str]] = collections.defaultdict(list)
    for name, header in macros.items():
        by_header[header].append(name)
    lines = []
    for header in sorted(by_header):
        line = f"{header}:"
        for name in sorted(by_header[header]):
            if len(line) + 1 + len(name) > 88:
                lines.append(line)
                line = " "
            line += f" {name}"
        lines.append(line)
    return "\n".join(lines)


def _parse(table: str) -> dict[str, str]:
    macros: dict[str, str] = {}
    header = ""
    for line in table.strip().splitlines():
        if not line.startswith(" "):
            header, _, line = line.partition(":")
        for name in line.split():
            macros[name] = header
    return macros


_TABLE = """
byteswap.h: INTPTR_MAX INTPTR_MIN INT_FAST16_MAX INT_FAST16_MIN INT_FAST32_MAX
  INT_FAST32_MIN PTRDIFF_MAX PTRDIFF_MIN SIZE_MAX UINTPTR_MAX UINT_FAST16_MAX
  UINT_FAST32_MAX
cpio.h: C_IRGRP C_IROTH C_IRUSR C_ISBLK C_ISCHR C_ISCTG C_ISDIR C_ISFIFO C_ISGID C_ISLNK
  C_ISREG C_ISSOCK C_ISUID C_ISVTX C_IWGRP C_IWOTH C_IWUSR C_IXGRP C_IXOTH C_IXUSR
dirent.h: DT_BLK DT_CHR DT_DIR DT_FIFO DT_LNK DT_REG DT_UNKNOWN
endian.h: BIG_ENDIAN BYTE_ORDER LITTLE_ENDIAN PDP_ENDIAN
fcntl.h: AT_EACCESS AT_FDCWD AT_REMOVEDIR AT_SYMLINK_FOLLOW AT_SYMLINK_NOFOLLOW
  FD_CLOEXEC F_GETFD F_GETFL F_SETFD F_SETFL O_ACCMODE O_APPEND O_CLOEXEC O_CREAT
  O_DIRECTORY O_DSYNC O_EXCL O_EXEC O_NOCTTY O_NOFOLLOW O_NONBLOCK O_RDONLY O_RDWR
  O_RSYNC O_SEARCH O_SYNC O_TRUNC O_TTY_INIT O_WRONLY POSIX_FADV_DONTNEED
  POSIX_FADV_NOREUSE POSIX_FADV_NORMAL POSIX_FADV_RANDOM POSIX_FADV_SEQUENTIAL
  POSIX_FADV_WILLNEED
fenv.h: FE_ALL_EXCEPT FE_DFL_ENV FE_TONEAREST
float.h: DBL_DECIMAL_DIG DBL_DIG DBL_EPSILON DBL_HAS_SUBNORM DBL_MANT_DIG DBL_MAX
  DBL_MAX_10_EXP DBL_MAX_EXP DBL_MIN DBL_MIN_10_EXP DBL_MIN_EXP DBL_TRUE_MIN DECIMAL_DIG
  FLT_DECIMAL_DIG FLT_DIG FLT_EPSILON FLT_EVAL_METHOD FLT_HAS_SUBNORM FLT_MANT_DIG
  FLT_MAX FLT_MAX_10_EXP FLT_MAX_EXP FLT_MIN FLT_MIN_10_EXP FLT_MIN_EXP FLT_RADIX
  FLT_ROUNDS FLT_TRUE_MIN LDBL_DECIMAL_DIG LDBL_DIG LDBL_EPSILON LDBL_HAS_SUBNORM
  LDBL_MANT_DIG LDBL_MAX LDBL_MAX_10_EXP LDBL_MAX_EXP LDBL_MIN LDBL_MIN_10_EXP
  LDBL_MIN_EXP LDBL_TRUE_MIN
fmtmsg.h: MM_APPL MM_CONSOLE MM_ERROR MM_FIRM MM_HALT MM_HARD MM_INFO MM_NOCON MM_NOMSG
  MM_NOSEV MM_NOTOK MM_NRECOV MM_NULLACT MM_NULLLBL MM_NULLMC MM_NULLSEV MM_NULLTAG
  MM_NULLTXT MM_OK MM_OPSYS MM_PRINT MM_RECOVER MM_SOFT MM_UTIL MM_WARNING
fnmatch.h: FNM_CASEFOLD FNM_FILE_NAME FNM_LEADING_DIR FNM_NOESCAPE FNM_NOMATCH FNM_NOSYS
  FNM_PATHNAME FNM_PERIOD
fts.h: FTS_AGAIN FTS_COMFOLLOW FTS_D FTS_DC FTS_DEFAULT FTS_DNR FTS_DONTCHDIR FTS_DOT
  FTS_DP FTS_ERR FTS_F FTS_FOLLOW FTS_INIT FTS_LOGICAL FTS_NAMEONLY FTS_NOCHDIR
  FTS_NOINSTR FTS_NOSTAT FTS_NS FTS_NSOK FTS_OPTIONMASK FTS_PHYSICAL FTS_ROOTLEVEL
  FTS_ROOTPARENTLEVEL FTS_SEEDOT FTS_SKIP FTS_SL FTS_SLNONE FTS_STOP FTS_SYMFOLLOW FTS_W
  FTS_WHITEOUT FTS_XDEV
ftw.h: FTW_CHDIR FTW_D FTW_DEPTH FTW_DNR FTW_DP FTW_F FTW_MOUNT FTW_NS FTW_PHYS FTW_SL
  FTW_SLN
glob.h: GLOB_ABORTED GLOB_APPEND GLOB_DOOFFS GLOB_ERR GLOB_MARK GLOB_NOCHECK
  GLOB_NOESCAPE GLOB_NOMATCH GLOB_NOSORT GLOB_NOSPACE GLOB_NOSYS GLOB_PERIOD
langinfo.h: ABDAY_1 ABDAY_2 ABDAY_3 ABDAY_4 ABDAY_5 ABDAY_6 ABDAY_7 ABMON_1 ABMON_10
  ABMON_11 ABMON_12 ABMON_2 ABMON_3 ABMON_4 ABMON_5 ABMON_6 ABMON_7 ABMON_8 ABMON_9
  ALT_DIGITS AM_STR DAY_1 DAY_2 DAY_3 DAY_4 DAY_5 DAY_6 DAY_7 D_FMT D_T_FMT ERA_D_FMT
  ERA_D_T_FMT ERA_T_FMT MON_1 MON_10 MON_11 MON_12 MON_2 MON_3 MON_4 MON_5 MON_6 MON_7
  MON_8 MON_9 NL_LOCALE_NAME PM_STR T_FMT T_FMT_AMPM
limits.h: ARG_MAX CHARCLASS_NAME_MAX CHAR_BIT CHAR_MAX CHAR_MIN COLL_WEIGHTS_MAX
  DELAYTIMER_MAX HOST_NAME_MAX INT_MAX INT_MIN IOV_MAX LLONG_MAX LLONG_MIN LONG_BIT
  LONG_LONG_MAX LONG_LONG_MIN LONG_MAX LONG_MIN MB_LEN_MAX NAME_MAX NGROUPS_MAX
  NL_ARGMAX NL_LANGMAX NL_MSGMAX NL_NMAX NL_SETMAX NL_TEXTMAX PAGE_SIZE PATH_MAX
  RE_DUP_MAX SCHAR_MAX SCHAR_MIN SHRT_MAX SHRT_MIN SSIZE_MAX SYMLOOP_MAX TTY_NAME_MAX
  TZNAME_MAX UCHAR_MAX UINT_MAX ULLONG_MAX ULONG_LONG_MAX ULONG_MAX USHRT_MAX WORD_BIT
locale.h: LC_ALL LC_ALL_MASK LC_COLLATE LC_COLLATE_MASK LC_CTYPE LC_CTYPE_MASK
  LC_GLOBAL_LOCALE LC_MESSAGES LC_MESSAGES_MASK LC_MONETARY LC_MONETARY_MASK LC_NUMERIC
  LC_NUMERIC_MASK LC_TIME LC_TIME_MASK
math.h: FP_ILOGB0 FP_ILOGBNAN FP_INFINITE FP_NAN FP_NORMAL FP_SUBNORMAL FP_ZERO HUGE_VAL
  HUGE_VALF HUGE_VALL MATH_ERREXCEPT MATH_ERRNO M_1_PI M_2_PI M_2_SQRTPI M_E M_LN10
  M_LN2 M_LOG10E M_LOG2E M_PI M_PI_2 M_PI_4 M_SQRT1_2 M_SQRT2
netinet/in.h: GROUP_FILTER_SIZE IN6ADDR_ANY_INIT IN6ADDR_LOOPBACK_INIT
  IN6_ARE_ADDR_EQUAL IN6_IS_ADDR_LINKLOCAL IN6_IS_ADDR_LOOPBACK IN6_IS_ADDR_MC_GLOBAL
  IN6_IS_ADDR_MC_LINKLOCAL IN6_IS_ADDR_MC_NODELOCAL IN6_IS_ADDR_MC_ORGLOCAL
  IN6_IS_ADDR_MC_SITELOCAL IN6_IS_ADDR_MULTICAST IN6_IS_ADDR_SITELOCAL
  IN6_IS_ADDR_UNSPECIFIED IN6_IS_ADDR_V4COMPAT IN6_IS_ADDR_V4MAPPED
  INADDR_ALLHOSTS_GROUP INADDR_ALLRTRS_GROUP INADDR_ALLSNOOPERS_GROUP INADDR_ANY
  INADDR_BROADCAST INADDR_LOOPBACK INADDR_MAX_LOCAL_GROUP INADDR_NONE
  INADDR_UNSPEC_GROUP INET6_ADDRSTRLEN INET_ADDRSTRLEN IN_BADCLASS IN_CLASSA
  IN_CLASSA_HOST IN_CLASSA_MAX IN_CLASSA_NET IN_CLASSA_NSHIFT IN_CLASSB IN_CLASSB_HOST
  IN_CLASSB_MAX IN_CLASSB_NET IN_CLASSB_NSHIFT IN_CLASSC IN_CLASSC_HOST IN_CLASSC_NET
  IN_CLASSC_NSHIFT IN_CLASSD IN_EXPERIMENTAL IN_LOOPBACKNET IN_MULTICAST IPPORT_RESERVED
  IPPROTO_ICMP IPPROTO_IP IPPROTO_IPV6 IPPROTO_RAW IPPROTO_TCP IPPROTO_UDP
  IPV6_2292DSTOPTS IPV6_2292HOPLIMIT IPV6_2292HOPOPTS IPV6_2292PKTINFO
  IPV6_2292PKTOPTIONS IPV6_2292RTHDR IPV6_ADDRFORM IPV6_ADDR_PREFERENCES
  IPV6_ADD_MEMBERSHIP IPV6_AUTHHDR IPV6_AUTOFLOWLABEL IPV6_CHECKSUM IPV6_DONTFRAG
  IPV6_DROP_MEMBERSHIP IPV6_DSTOPTS IPV6_FREEBIND IPV6_HDRINCL IPV6_HOPLIMIT
  IPV6_HOPOPTS IPV6_IPSEC_POLICY IPV6_JOIN_ANYCAST IPV6_JOIN_GROUP IPV6_LEAVE_ANYCAST
  IPV6_LEAVE_GROUP IPV6_MINHOPCOUNT IPV6_MTU IPV6_MTU_DISCOVER IPV6_MULTICAST_ALL
  IPV6_MULTICAST_HOPS IPV6_MULTICAST_IF IPV6_MULTICAST_LOOP IPV6_NEXTHOP
  IPV6_ORIGDSTADDR IPV6_PATHMTU IPV6_PKTINFO IPV6_PMTUDISC_DO IPV6_PMTUDISC_DONT
  IPV6_PMTUDISC_INTERFACE IPV6_PMTUDISC_OMIT IPV6_PMTUDISC_PROBE IPV6_PMTUDISC_WANT
  IPV6_PREFER_SRC_CGA IPV6_PREFER_SRC_COA IPV6_PREFER_SRC_HOME IPV6_PREFER_SRC_NONCGA
  IPV6_PREFER_SRC_PUBLIC IPV6_PREFER_SRC_PUBTMP_DEFAULT IPV6_PREFER_SRC_TMP
  IPV6_RECVDSTOPTS IPV6_RECVERR IPV6_RECVFRAGSIZE IPV6_RECVHOPLIMIT IPV6_RECVHOPOPTS
  IPV6_RECVORIGDSTADDR IPV6_RECVPATHMTU IPV6_RECVPKTINFO IPV6_RECVRTHDR IPV6_RECVTCLASS
  IPV6_ROUTER_ALERT IPV6_ROUTER_ALERT_ISOLATE IPV6_RTHDR IPV6_RTHDRDSTOPTS
  IPV6_RTHDR_LOOSE IPV6_RTHDR_STRICT IPV6_RTHDR_TYPE_0 IPV6_RXDSTOPTS IPV6_RXHOPOPTS
  IPV6_TCLASS IPV6_TRANSPARENT IPV6_UNICAST_HOPS IPV6_UNICAST_IF IPV6_V6ONLY
  IPV6_XFRM_POLICY IP_ADD_MEMBERSHIP IP_ADD_SOURCE_MEMBERSHIP IP_BIND_ADDRESS_NO_PORT
  IP_BLOCK_SOURCE IP_CHECKSUM IP_DEFAULT_MULTICAST_LOOP IP_DEFAULT_MULTICAST_TTL
  IP_DROP_MEMBERSHIP IP_DROP_SOURCE_MEMBERSHIP IP_FREEBIND IP_HDRINCL IP_IPSEC_POLICY
  IP_MAX_MEMBERSHIPS IP_MINTTL IP_MSFILTER IP_MSFILTER_SIZE IP_MTU IP_MTU_DISCOVER
  IP_MULTICAST_ALL IP_MULTICAST_IF IP_MULTICAST_LOOP IP_MULTICAST_TTL IP_NODEFRAG
  IP_OPTIONS IP_ORIGDSTADDR IP_PASSSEC IP_PKTINFO IP_PKTOPTIONS IP_PMTUDISC
  IP_PMTUDISC_DO IP_PMTUDISC_DONT IP_PMTUDISC_INTERFACE IP_PMTUDISC_OMIT
  IP_PMTUDISC_PROBE IP_PMTUDISC_WANT IP_RECVERR IP_RECVERR_RFC4884 IP_RECVFRAGSIZE
  IP_RECVOPTS IP_RECVORIGDSTADDR IP_RECVRETOPTS IP_RECVTOS IP_RECVTTL IP_RETOPTS
  IP_ROUTER_ALERT IP_TOS IP_TRANSPARENT IP_TTL IP_UNBLOCK_SOURCE IP_UNICAST_IF
  IP_XFRM_POLICY MCAST_BLOCK_SOURCE MCAST_EXCLUDE MCAST_INCLUDE MCAST_JOIN_GROUP
  MCAST_JOIN_SOURCE_GROUP MCAST_LEAVE_GROUP MCAST_LEAVE_SOURCE_GROUP MCAST_MSFILTER
  MCAST_UNBLOCK_SOURCE
netinet/tcp.h: SOL_TCP TCPI_OPT_ECN TCPI_OPT_SACK TCPI_OPT_TIMESTAMPS TCPI_OPT_WSCALE
  TCPOLEN_MAXSEG TCPOLEN_SACK_PERMITTED TCPOLEN_TIMESTAMP TCPOLEN_WINDOW TCPOPT_EOL
  TCPOPT_MAXSEG TCPOPT_NOP TCPOPT_SACK TCPOPT_SACK_PERMITTED TCPOPT_TIMESTAMP
  TCPOPT_WINDOW TCP_CA_CWR TCP_CC_INFO TCP_CLOSE TCP_CLOSE_WAIT TCP_CLOSING TCP_CM_INQ
  TCP_CONGESTION TCP_CORK TCP_DEFER_ACCEPT TCP_ESTABLISHED TCP_FASTOPEN
  TCP_FASTOPEN_CONNECT TCP_FASTOPEN_KEY TCP_FASTOPEN_NO_COOKIE TCP_FIN_WAIT1
  TCP_FIN_WAIT2 TCP_INFO TCP_INQ TCP_KEEPCNT TCP_KEEPIDLE TCP_KEEPINTVL TCP_LAST_ACK
  TCP_LINGER2 TCP_LISTEN TCP_MAXSEG TCP_MD5SIG TCP_MD5SIG_EXT TCP_MD5SIG_FLAG_IFINDEX
  TCP_MD5SIG_FLAG_PREFIX TCP_MD5SIG_MAXKEYLEN TCP_NODELAY TCP_NOTSENT_LOWAT
  TCP_QUEUE_SEQ TCP_QUICKACK TCP_REPAIR TCP_REPAIR_OFF TCP_REPAIR_OFF_NO_WP
  TCP_REPAIR_ON TCP_REPAIR_OPTIONS TCP_REPAIR_QUEUE TCP_REPAIR_WINDOW TCP_SAVED_SYN
  TCP_SAVE_SYN TCP_SYNCNT TCP_SYN_RECV TCP_SYN_SENT TCP_THIN_DUPACK
  TCP_THIN_LINEAR_TIMEOUTS TCP_TIMESTAMP TCP_TIME_WAIT TCP_TX_DELAY TCP_ULP
  TCP_USER_TIMEOUT TCP_WINDOW_CLAMP TCP_ZEROCOPY_RECEIVE TH_ACK TH_FIN TH_PUSH TH_RST
  TH_SYN TH_URG
nl_types.h: NL_CAT_LOCALE NL_SETD
regex.h: REG_BADBR REG_BADPAT REG_BADRPT REG_EBRACE REG_EBRACK REG_ECOLLATE REG_ECTYPE
  REG_EESCAPE REG_ENOSYS REG_EPAREN REG_ERANGE REG_ESPACE REG_ESUBREG REG_EXTENDED
  REG_ICASE REG_NEWLINE REG_NOMATCH REG_NOSUB REG_NOTBOL REG_NOTEOL REG_OK
semaphore.h: SEM_FAILED
signal.h: SIG_DFL SIG_ERR SIG_IGN
stdatomic.h: ATOMIC_BOOL_LOCK_FREE ATOMIC_CHAR16_T_LOCK_FREE ATOMIC_CHAR32_T_LOCK_FREE
  ATOMIC_CHAR_LOCK_FREE ATOMIC_FLAG_INIT ATOMIC_INT_LOCK_FREE ATOMIC_LLONG_LOCK_FREE
  ATOMIC_LONG_LOCK_FREE ATOMIC_POINTER_LOCK_FREE ATOMIC_SHORT_LOCK_FREE ATOMIC_VAR_INIT
  ATOMIC_WCHAR_T_LOCK_FREE
stdint.h: INT16_C INT16_MAX INT16_MIN INT32_C INT32_MAX INT32_MIN INT64_C INT64_MAX
  INT64_MIN INT8_C INT8_MAX INT8_MIN INTMAX_C INTMAX_MAX INTMAX_MIN INT_FAST64_MAX
  INT_FAST64_MIN INT_FAST8_MAX INT_FAST8_MIN INT_LEAST16_MAX INT_LEAST16_MIN
  INT_LEAST32_MAX INT_LEAST32_MIN INT_LEAST64_MAX INT_LEAST64_MIN INT_LEAST8_MAX
  INT_LEAST8_MIN SIG_ATOMIC_MAX SIG_ATOMIC_MIN UINT16_C UINT16_MAX UINT32_C UINT32_MAX
  UINT64_C UINT64_MAX UINT8_C UINT8_MAX UINTMAX_C UINTMAX_MAX UINT_FAST64_MAX
  UINT_FAST8_MAX UINT_LEAST16_MAX UINT_LEAST32_MAX UINT_LEAST64_MAX UINT_LEAST8_MAX
  WCHAR_MAX WCHAR_MIN WINT_MAX WINT_MIN
stdio.h: FILENAME_MAX FOPEN_MAX SEEK_CUR SEEK_END SEEK_SET
stdio_ext.h: FSETLOCKING_BYCALLER FSETLOCKING_INTERNAL FSETLOCKING_QUERY
stdlib.h: EXIT_FAILURE EXIT_SUCCESS MB_CUR_MAX RAND_MAX
stropts.h: I_ATMARK I_CANPUT I_CKBAND I_FDINSERT I_FIND I_FLUSH I_FLUSHBAND I_GETBAND
  I_GETCLTIME I_GETSIG I_GRDOPT I_GWROPT I_LINK I_LIST I_LOOK I_NREAD I_PEEK I_PLINK
  I_POP I_PUNLINK I_PUSH I_RECVFD I_SENDFD I_SETCLTIME I_SETSIG I_SRDOPT I_STR I_SWROPT
  I_UNLINK MSG_ANY MSG_BAND MSG_HIPRI MUXID_ALL RS_HIPRI S_BANDURG S_ERROR S_HANGUP
  S_HIPRI S_INPUT S_MSG S_OUTPUT S_RDBAND S_RDNORM S_WRBAND S_WRNORM
sys/eventfd.h: EFD_CLOEXEC EFD_NONBLOCK EFD_SEMAPHORE
sys/file.h: LOCK_EX LOCK_NB LOCK_SH LOCK_UN L_INCR L_SET L_XTND
sys/mman.h: MADV_COLD MADV_DODUMP MADV_DOFORK MADV_DONTDUMP MADV_DONTFORK MADV_DONTNEED
  MADV_FREE MADV_HUGEPAGE MADV_HWPOISON MADV_KEEPONFORK MADV_MERGEABLE MADV_NOHUGEPAGE
  MADV_NORMAL MADV_PAGEOUT MADV_RANDOM MADV_REMOVE MADV_SEQUENTIAL MADV_SOFT_OFFLINE
  MADV_UNMERGEABLE MADV_WILLNEED MADV_WIPEONFORK MAP_ANON MAP_ANONYMOUS MAP_DENYWRITE
  MAP_EXECUTABLE MAP_FAILED MAP_FILE MAP_FIXED MAP_FIXED_NOREPLACE MAP_GROWSDOWN
  MAP_HUGETLB MAP_HUGE_16GB MAP_HUGE_16MB MAP_HUGE_1GB MAP_HUGE_1MB MAP_HUGE_256MB
  MAP_HUGE_2GB MAP_HUGE_2MB MAP_HUGE_32MB MAP_HUGE_512KB MAP_HUGE_512MB MAP_HUGE_64KB
  MAP_HUGE_8MB MAP_HUGE_MASK MAP_HUGE_SHIFT MAP_LOCKED MAP_NONBLOCK MAP_NORESERVE
  MAP_POPULATE MAP_PRIVATE MAP_SHARED MAP_SHARED_VALIDATE MAP_STACK MAP_SYNC MAP_TYPE
  MCL_CURRENT MCL_FUTURE MCL_ONFAULT MFD_ALLOW_SEALING MFD_CLOEXEC MFD_HUGETLB
  MLOCK_ONFAULT MREMAP_DONTUNMAP MREMAP_FIXED MREMAP_MAYMOVE MS_ASYNC MS_INVALIDATE
  MS_SYNC POSIX_MADV_DONTNEED POSIX_MADV_NORMAL POSIX_MADV_RANDOM POSIX_MADV_SEQUENTIAL
  POSIX_MADV_WILLNEED PROT_EXEC PROT_GROWSDOWN PROT_GROWSUP PROT_NONE PROT_READ
  PROT_WRITE
sys/param.h: DEV_BSIZE
sys/resource.h: RUSAGE_CHILDREN RUSAGE_SELF
sys/select.h: FD_CLR FD_COPY FD_ISSET FD_SET FD_SETSIZE FD_ZERO
sys/socket.h: AF_INET AF_INET6 AF_UNIX AF_UNSPEC MSG_PEEK MSG_TRUNC MSG_WAITALL SHUT_RD
  SHUT_RDWR SHUT_WR SOCK_CLOEXEC SOCK_DGRAM SOCK_NONBLOCK SOCK_STREAM SOL_SOCKET SO_TYPE
sys/stat.h: S_IEXEC S_IFBLK S_IFCHR S_IFDIR S_IFIFO S_IFLNK S_IFMT S_IFREG S_IFSOCK
  S_IREAD S_IRGRP S_IROTH S_IRUSR S_IRWXG S_IRWXO S_IRWXU S_ISBLK S_ISCHR S_ISDIR
  S_ISFIFO S_ISGID S_ISLNK S_ISREG S_ISSOCK S_ISUID S_ISVTX S_IWGRP S_IWOTH S_IWRITE
  S_IWUSR S_IXGRP S_IXOTH S_IXUSR UTIME_NOW UTIME_OMIT
sys/sysinfo.h: SI_LOAD_SHIFT
sys/time.h: TIMESPEC_TO_TIMEVAL TIMEVAL_TO_TIMESPEC
sys/timex.h: ADJ_ESTERROR ADJ_FREQUENCY ADJ_MAXERROR ADJ_MICRO ADJ_NANO ADJ_OFFSET
  ADJ_OFFSET_SINGLESHOT ADJ_OFFSET_SS_READ ADJ_SETOFFSET ADJ_STATUS ADJ_TAI ADJ_TICK
  ADJ_TIMECONST MOD_CLKA MOD_CLKB MOD_ESTERROR MOD_FREQUENCY MOD_MAXERROR MOD_MICRO
  MOD_NANO MOD_OFFSET MOD_STATUS MOD_TAI MOD_TIMECONST STA_CLK STA_CLOCKERR STA_DEL
  STA_FLL STA_FREQHOLD STA_INS STA_MODE STA_NANO STA_PLL STA_PPSERROR STA_PPSFREQ
  STA_PPSJITTER STA_PPSSIGNAL STA_PPSTIME STA_PPSWANDER STA_RONLY STA_UNSYNC TIME_BAD
  TIME_DEL TIME_ERROR TIME_INS TIME_OK TIME_OOP TIME_WAIT
sys/ttydefaults.h: TTYDEF_CFLAG TTYDEF_IFLAG TTYDEF_LFLAG TTYDEF_OFLAG TTYDEF_SPEED
sys/uio.h: UIO_MAXIOV
sys/un.h: SUN_LEN
sysexits.h: EX_CANTCREAT EX_CONFIG EX_DATAERR EX_IOERR EX_NOHOST EX_NOINPUT EX_NOPERM
  EX_NOUSER EX_OK EX_OSERR EX_OSFILE EX_PROTOCOL EX_SOFTWARE EX_TEMPFAIL EX_UNAVAILABLE
  EX_USAGE EX__BASE EX__MAX
threads.h: ONCE_FLAG_INIT TSS_DTOR_ITERATIONS
time.h: CLOCKS_PER_SEC CLOCK_MONOTONIC CLOCK_PROCESS_CPUTIME_ID CLOCK_REALTIME
  CLOCK_THREAD_CPUTIME_ID TIMER_ABSTIME TIME_UTC
unistd.h: F_LOCK F_OK F_TEST F_TLOCK F_ULOCK POSIX_CLOSE_RESTART R_OK STDERR_FILENO
  STDIN_FILENO STDOUT_FILENO W_OK X_OK
"""

MACROS: dict[str, str] = _parse(_TABLE)

#: LOWER: every lower-case object-like macro the same headers define (`python -m
#: supervisor.cmacros --lower`).  A field, struct or enum so named gets a trailing _
#: (bindgen._ident, _type_name) and a function is refused (bindgen._reserved): a
#: field `stMtime` was `int64_t st_mtime;`, which a plugin that included
#: <sys/stat.h> first read as `int64_t st_mtim.tv_sec;` (the header did not
#: compile), `noArgument` was <getopt.h>'s 0, `struct Direct` <sys/dir.h>'s dirent.
_LOWER_TABLE = """
alloca.h: alloca
assert.h: static_assert
complex.h: complex
dirent.h: alphasort64 d_fileno dirent64 getdents64 ino64_t off64_t readdir64 scandir64
  versionsort64
errno.h: errno
fcntl.h: creat64 loff_t open64 openat64 posix_fadvise64 posix_fallocate64
ftw.h: nftw64
getopt.h: no_argument optional_argument required_argument
glob.h: glob64 glob64_t globfree64
ifaddrs.h: ifa_broadaddr ifa_dstaddr
iso646.h: and and_eq bitand bitor compl not not_eq or or_eq xor xor_eq
math.h: math_errhandling
stdalign.h: alignas alignof
stdatomic.h: atomic_compare_exchange_strong_explicit
  atomic_compare_exchange_weak_explicit atomic_exchange_explicit
  atomic_fetch_add_explicit atomic_fetch_and_explicit atomic_fetch_or_explicit
  atomic_fetch_sub_explicit atomic_fetch_xor_explicit atomic_init atomic_load_explicit
  atomic_store_explicit
stdbool.h: bool false true
stdio.h: fgetpos64 fopen64 fpos64_t freopen64 fseeko64 fsetpos64 ftello64 stderr stdin
  stdout
stdnoreturn.h: noreturn
sys/dir.h: direct
sys/mman.h: mmap64
sys/stat.h: fstat64 fstatat64 lstat64 st_atime st_ctime st_mtime stat64
sys/types.h: blkcnt64_t fsblkcnt64_t fsfilcnt64_t
sys/uio.h: preadv64 pwritev64
threads.h: thread_local
unistd.h: ftruncate64 lseek64 pread64 pwrite64
"""

LOWER: dict[str, str] = _parse(_LOWER_TABLE)


if __name__ == "__main__":       # the table (--lower: LOWER's), from the toolchain installed
    import shutil
    import sys

    from . import bindgen
    print(_table(from_toolchain(shutil.which(os.environ.get("WSUPER_CLANG", "clang")) or "clang",
                                bindgen._C_HEADERS,
                                _LOWER_SHAPE if sys.argv[1:] == ["--lower"] else _SHAPE)))
