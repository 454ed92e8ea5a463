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
DECLARED: every lower-case name they declare at file scope (a function, a
variable, a type, a tag, an enumerant) or define as a function-like macro
(`clock_gettime`, `fputc`, `atomic_load`), which a generated struct, enum or
function could be; made by `python -m supervisor.cmacros --declared`.
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


#: A lower-case function-like macro (`#define atomic_load(object) ...`, `va_start`)
_CALLED_SHAPE = re.compile(r"#define ([a-z][a-z0-9_]*)\(")
_DECLARATIONS = ("FunctionDecl", "VarDecl", "TypedefDecl", "RecordDecl", "EnumDecl",
                 "EnumConstantDecl")


def declared_from_toolchain(clang: str, c_headers) -> dict[str, str]:
    """{name: header} of every lower-case name the installed toolchain's C library
    headers declare at file scope (a function, a variable, a type, a struct, union
    or enum tag, an enumerant) or define as a function-like macro: each in the
    header with fewest such names that declares it, alone (those of
    from_toolchain's, with and without _GNU_SOURCE)."""
    import json

    def run(*args, source=""):
        return subprocess.run([clang, "--target=wasm32-wasi", *args], input=source,
                              capture_output=True, text=True)
    headers = set(c_headers) | set(EXTRA_HEADERS)
    for line in run("-E", "-v", "-x", "c", "-").stderr.splitlines():
        root = line.strip()
        if line.startswith(" /") and os.path.isdir(os.path.join(root, "sys")):
            headers |= {f"sys/{f}" for f in os.listdir(os.path.join(root, "sys"))
                        if f.endswith(".h")}
    own = set(_CALLED_SHAPE.findall(run("-dM", "-E", "-x", "c", "-", *FEATURES).stdout))
    declared: dict[str, set[str]] = collections.defaultdict(set)
    for extra in ((), ("-D_GNU_SOURCE",)):
        for header in sorted(headers):
            source = f"#include <{header}>\n"
            r = run("-fsyntax-only", "-Xclang", "-ast-dump=json", "-x", "c", "-", *FEATURES,
                    *extra, source=source)
            if r.returncode:
                continue            # not wasi-libc's (or not without what it needs)
            todo = list(json.loads(r.stdout).get("inner", ()))
            while todo:
                node = todo.pop()
                if node.get("kind") == "EnumDecl":
                    todo += node.get("inner", ())
                name = node.get("name") or ""
                if node.get("kind") in _DECLARATIONS and not node.get("isImplicit") \
                        and re.fullmatch(r"[a-z][a-z0-9_]*", name):
                    declared[name].add(header)
            macros = run("-dM", "-E", "-x", "c", "-", *FEATURES, *extra, source=source)
            for name in set(_CALLED_SHAPE.findall(macros.stdout)) - own:
                declared[name].add(header)
    size = collections.Counter(h for hs in declared.values() for h in hs)
    return {name: min(hs, key=lambda h: (size[h], h)) for name, hs in declared.items()}


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


#: DECLARED: every lower-case name the same headers declare at file scope or define
#: as a function-like macro (`python -m supervisor.cmacros --declared`).  A struct or
#: enum so named gets a trailing _ and a function is refused (bindgen._type_name,
#: _reserved): only what the headers wsuper.h includes declare was known, and a
#: client stub `clock_gettime` (interface Clock, method gettime) or `sem_wait`, a
#: `struct Fputc`, did not compile beside <time.h>, <semaphore.h>, <stdio.h>, and
#: `atomic_load` was <stdatomic.h>'s macro.
_DECLARED_TABLE = """
alloca.h: alloca
ar.h: ar_hdr
assert.h: assert
byteswap.h: bswap_16 bswap_32 bswap_64
complex.h: cabs cabsf cabsl cacos cacosf cacosh cacoshf cacoshl cacosl carg cargf cargl
  casin casinf casinh casinhf casinhl casinl catan catanf catanh catanhf catanhl catanl
  ccos ccosf ccosh ccoshf ccoshl ccosl cexp cexpf cexpl cimag cimagf cimagl clog clogf
  clogl conj conjf conjl cpow cpowf cpowl cproj cprojf cprojl creal crealf creall csin
  csinf csinh csinhf csinhl csinl csqrt csqrtf csqrtl ctan ctanf ctanh ctanhf ctanhl
  ctanl
crypt.h: crypt crypt_data crypt_r
ctype.h: isalnum isalnum_l isalpha isalpha_l isascii isblank isblank_l iscntrl iscntrl_l
  isdigit isdigit_l isgraph isgraph_l islower islower_l isprint isprint_l ispunct
  ispunct_l isspace isspace_l isupper isupper_l isxdigit isxdigit_l toascii tolower
  tolower_l toupper toupper_l
dirent.h: alphasort closedir dirent dirfd fdclosedir fdopendir getdents opendir
  opendirat readdir rewinddir scandir scandirat seekdir telldir versionsort
endian.h: be16toh be32toh be64toh betoh16 betoh32 betoh64 htobe16 htobe32 htobe64
  htole16 htole32 htole64 le16toh le32toh le64toh letoh16 letoh32 letoh64 uint16_t
  uint32_t uint64_t
err.h: err errx verr verrx vwarn vwarnx warn warnx
errno.h: errno program_invocation_name program_invocation_short_name
fcntl.h: creat fcntl open openat posix_fadvise posix_fallocate
fenv.h: feclearexcept fegetenv fegetexceptflag fegetround feholdexcept fenv_t
  feraiseexcept fesetenv fesetexceptflag fesetround fetestexcept feupdateenv fexcept_t
fmtmsg.h: fmtmsg
fnmatch.h: fnmatch
ftw.h: nftw
getopt.h: getopt getopt_long getopt_long_only optarg opterr optind option optopt
  optreset
glob.h: glob glob_t globfree
iconv.h: iconv iconv_close iconv_open iconv_t
ifaddrs.h: freeifaddrs getifaddrs ifaddrs
inttypes.h: imaxabs imaxdiv imaxdiv_t strtoimax strtoumax wcstoimax wcstoumax
langinfo.h: nl_langinfo nl_langinfo_l
libgen.h: basename dirname
limits.h: iovec suseconds_t time_t timespec timeval
locale.h: duplocale freelocale lconv localeconv newlocale setlocale uselocale
malloc.h: calloc free malloc malloc_usable_size realloc reallocarray
math.h: acos acosf acosh acoshf acoshl acosl asin asinf asinh asinhf asinhl asinl atan
  atan2 atan2f atan2l atanf atanh atanhf atanhl atanl cbrt cbrtf cbrtl ceil ceilf ceill
  copysign copysignf copysignl cos cosf cosh coshf coshl cosl double_t drem dremf erf
  erfc erfcf erfcl erff erfl exp exp10 exp10f exp10l exp2 exp2f exp2l expf expl expm1
  expm1f expm1l fabs fabsf fabsl fdim fdimf fdiml finite finitef float_t floor floorf
  floorl fma fmaf fmal fmax fmaxf fmaxl fmin fminf fminl fmod fmodf fmodl fpclassify
  frexp frexpf frexpl hypot hypotf hypotl ilogb ilogbf ilogbl isfinite isgreater
  isgreaterequal isinf isless islessequal islessgreater isnan isnormal isunordered j0
  j0f j1 j1f jn jnf ldexp ldexpf ldexpl lgamma lgamma_r lgammaf lgammaf_r lgammal
  lgammal_r llrint llrintf llrintl llround llroundf llroundl log log10 log10f log10l
  log1p log1pf log1pl log2 log2f log2l logb logbf logbl logf logl lrint lrintf lrintl
  lround lroundf lroundl modf modff modfl nan nanf nanl nearbyint nearbyintf nearbyintl
  nextafter nextafterf nextafterl nexttoward nexttowardf nexttowardl pow pow10 pow10f
  pow10l powf powl remainder remainderf remainderl remquo remquof remquol rint rintf
  rintl round roundf roundl scalb scalbf scalbln scalblnf scalblnl scalbn scalbnf
  scalbnl signbit signgam significand significandf sin sincos sincosf sincosl sinf sinh
  sinhf sinhl sinl sqrt sqrtf sqrtl tan tanf tanh tanhf tanhl tanl tgamma tgammaf
  tgammal trunc truncf truncl y0 y0f y1 y1f yn ynf
memory.h: explicit_bzero memccpy memchr memcmp memcpy memmem memmove mempcpy memrchr
  memset stpcpy stpncpy strcasestr strcat strchr strchrnul strcmp strcoll strcoll_l
  strcpy strcspn strdup strdupa strerror strerror_l strerror_r strlcat strlcpy strncat
  strncmp strncpy strndup strnlen strpbrk strrchr strsep strsignal strspn strstr strtok
  strtok_r strverscmp strxfrm strxfrm_l
monetary.h: locale_t ssize_t strfmon strfmon_l
mqueue.h: mq_attr mq_close mq_getattr mq_notify mq_open mq_receive mq_send mq_setattr
  mq_timedreceive mq_timedsend mq_unlink mqd_t pthread_attr_t sigevent
netinet/in.h: group_filter group_req group_source_req htonl htons in6_addr in6_pktinfo
  in6addr_any in6addr_loopback in_addr in_addr_t in_pktinfo in_port_t ip6_mtuinfo
  ip_mreq ip_mreq_source ip_mreqn ip_msfilter ip_opts ipv6_mreq ntohl ntohs sockaddr_in
  sockaddr_in6
netinet/tcp.h: tcp_diag_md5sig tcp_fastopen_client_fail tcp_info tcp_md5sig
  tcp_repair_window tcp_seq tcp_zerocopy_receive tcphdr
nl_types.h: catclose catgets catopen nl_catd nl_item
poll.h: nfds_t poll pollfd ppoll
regex.h: re_pattern_buffer regcomp regerror regex_t regexec regfree regmatch_t regoff_t
sched.h: pid_t sched_yield
search.h: endorder entry hcreate hcreate_r hdestroy hdestroy_r hsearch hsearch_data
  hsearch_r insque leaf lfind lsearch postorder preorder qelem remque tdelete tdestroy
  tfind tsearch twalk
semaphore.h: sem_close sem_destroy sem_getvalue sem_init sem_open sem_post sem_t
  sem_timedwait sem_trywait sem_unlink sem_wait
signal.h: bsd_signal psignal raise sig_atomic_t sig_t sighandler_t signal
stdarg.h: va_arg va_copy va_end va_list va_start
stdatomic.h: atomic_bool atomic_char atomic_char16_t atomic_char32_t
  atomic_compare_exchange_strong atomic_compare_exchange_weak atomic_exchange
  atomic_fetch_add atomic_fetch_and atomic_fetch_or atomic_fetch_sub atomic_fetch_xor
  atomic_flag atomic_flag_clear atomic_flag_clear_explicit atomic_flag_test_and_set
  atomic_flag_test_and_set_explicit atomic_int atomic_int_fast16_t atomic_int_fast32_t
  atomic_int_fast64_t atomic_int_fast8_t atomic_int_least16_t atomic_int_least32_t
  atomic_int_least64_t atomic_int_least8_t atomic_intmax_t atomic_intptr_t
  atomic_is_lock_free atomic_llong atomic_load atomic_long atomic_ptrdiff_t atomic_schar
  atomic_short atomic_signal_fence atomic_size_t atomic_store atomic_thread_fence
  atomic_uchar atomic_uint atomic_uint_fast16_t atomic_uint_fast32_t
  atomic_uint_fast64_t atomic_uint_fast8_t atomic_uint_least16_t atomic_uint_least32_t
  atomic_uint_least64_t atomic_uint_least8_t atomic_uintmax_t atomic_uintptr_t
  atomic_ullong atomic_ulong atomic_ushort atomic_wchar_t kill_dependency memory_order
  memory_order_acq_rel memory_order_acquire memory_order_consume memory_order_relaxed
  memory_order_release memory_order_seq_cst
stddef.h: max_align_t offsetof ptrdiff_t size_t wchar_t
stdint.h: int16_t int32_t int64_t int8_t int_fast16_t int_fast32_t int_fast64_t
  int_fast8_t int_least16_t int_least32_t int_least64_t int_least8_t intmax_t intptr_t
  uint8_t uint_fast16_t uint_fast32_t uint_fast64_t uint_fast8_t uint_least16_t
  uint_least32_t uint_least64_t uint_least8_t uintmax_t uintptr_t
stdio.h: asprintf clearerr clearerr_unlocked cookie_close_function_t
  cookie_io_functions_t cookie_read_function_t cookie_seek_function_t
  cookie_write_function_t cuserid dprintf fclose fdopen feof feof_unlocked ferror
  ferror_unlocked fflush fflush_unlocked fgetc fgetc_unlocked fgetln fgetpos fgets
  fgets_unlocked fileno fileno_unlocked fmemopen fopen fopencookie fpos_t fprintf fputc
  fputc_unlocked fputs fputs_unlocked fread fread_unlocked freopen fscanf fseek fseeko
  fsetpos ftell ftello fwrite fwrite_unlocked getc getc_unlocked getchar
  getchar_unlocked getdelim getline getw open_memstream perror printf putc putc_unlocked
  putchar putchar_unlocked puts putw remove rename rewind scanf setbuf setbuffer
  setlinebuf setvbuf snprintf sprintf sscanf stderr stdin stdout tmpfile tmpnam ungetc
  vasprintf vdprintf vfprintf vfscanf vprintf vscanf vsnprintf vsprintf vsscanf
stdlib.h: a64l abort abs aligned_alloc arc4random arc4random_buf arc4random_uniform
  at_quick_exit atexit atof atoi atol atoll bsearch clearenv div div_t drand48 ecvt
  erand48 exit fcvt gcvt getenv getsubopt initstate jrand48 l64a labs lcong48 ldiv
  ldiv_t llabs lldiv lldiv_t lrand48 mblen mbstowcs mbtowc mrand48 nrand48
  posix_memalign putenv qsort quick_exit rand rand_r random secure_getenv seed48 setenv
  setkey setstate srand srand48 srandom strtod strtod_l strtof strtof_l strtol strtold
  strtold_l strtoll strtoul strtoull system unsetenv wcstombs wctomb
strings.h: bcmp bcopy bzero ffs ffsl ffsll index rindex strcasecmp strcasecmp_l
  strncasecmp strncasecmp_l
stropts.h: bandinfo isastream str_list str_mlist strbuf strfdinsert strioctl strpeek
  strrecvfd
sys/eventfd.h: eventfd eventfd_read eventfd_t eventfd_write
sys/file.h: flock
sys/ioctl.h: ioctl
sys/mman.h: madvise memfd_create mincore mlock mlock2 mlockall mmap mprotect mremap
  msync munlock munlockall munmap posix_madvise remap_file_pages shm_open shm_unlink
sys/param.h: clrbit howmany isclr isset powerof2 roundup setbit
sys/random.h: getentropy
sys/reg.h: access chdir close confstr ctermid encrypt environ faccessat fdatasync
  fpathconf fsync ftruncate getcwd gethostid gethostname getlogin getlogin_r getpid
  isatty link linkat lseek pathconf posix_close pread pwrite read readlink readlinkat
  renameat rmdir sbrk sleep swab symlink symlinkat sysconf truncate ualarm unlink
  unlinkat usleep write
sys/resource.h: getrusage id_t rusage
sys/select.h: fd_set pselect select sigset_t
sys/socket.h: accept accept4 getsockopt linger mmsghdr msghdr recv recvmmsg send
  sendmmsg shutdown sockaddr sockaddr_storage socklen_t ucred
sys/stat.h: blkcnt_t blksize_t dev_t fstat fstatat futimens gid_t ino_t lstat mkdir
  mkdirat mode_t nlink_t stat uid_t utimensat
sys/sysinfo.h: get_avphys_pages get_nprocs get_nprocs_conf get_phys_pages sysinfo
sys/time.h: futimesat gettimeofday timeradd timerclear timercmp timerisset timersub
  timezone utimes
sys/timeb.h: ftime timeb
sys/times.h: clock_t times tms
sys/timex.h: adjtimex clock_adjtime clockid_t ntptimeval timex
sys/types.h: caddr_t fsblkcnt_t fsfilcnt_t key_t pthread_barrier_t pthread_barrierattr_t
  pthread_cond_t pthread_condattr_t pthread_key_t pthread_mutex_t pthread_mutexattr_t
  pthread_once_t pthread_rwlock_t pthread_rwlockattr_t pthread_spinlock_t pthread_t
  quad_t register_t u_char u_int u_int16_t u_int32_t u_int64_t u_int8_t u_long u_quad_t
  u_short uint ulong useconds_t ushort
sys/uio.h: off_t preadv process_vm_readv process_vm_writev pwritev readv writev
sys/un.h: sa_family_t sockaddr_un strlen
sys/utsname.h: uname utsname
threads.h: call_once cnd_broadcast cnd_destroy cnd_init cnd_signal cnd_t cnd_timedwait
  cnd_wait mtx_destroy mtx_init mtx_lock mtx_plain mtx_recursive mtx_t mtx_timed
  mtx_timedlock mtx_trylock mtx_unlock once_flag thrd_busy thrd_create thrd_current
  thrd_detach thrd_equal thrd_error thrd_exit thrd_join thrd_nomem thrd_sleep
  thrd_start_t thrd_success thrd_t thrd_timedout thrd_yield tss_create tss_delete
  tss_dtor_t tss_get tss_set tss_t
time.h: asctime asctime_r clock clock_getres clock_gettime clock_nanosleep ctime ctime_r
  difftime getdate getdate_err gmtime gmtime_r itimerspec localtime localtime_r mktime
  nanosleep strftime strftime_l strptime time timegm timer_t timespec_get tm
uchar.h: c16rtomb c32rtomb char16_t char32_t mbrtoc16 mbrtoc32 mbstate_t
utime.h: utimbuf utime
wasm_simd128.h: v128_t wasm_f32x4_abs wasm_f32x4_add wasm_f32x4_ceil wasm_f32x4_const
  wasm_f32x4_const_splat wasm_f32x4_convert_i32x4 wasm_f32x4_convert_u32x4
  wasm_f32x4_demote_f64x2_zero wasm_f32x4_div wasm_f32x4_eq wasm_f32x4_extract_lane
  wasm_f32x4_floor wasm_f32x4_ge wasm_f32x4_gt wasm_f32x4_le wasm_f32x4_lt
  wasm_f32x4_make wasm_f32x4_max wasm_f32x4_min wasm_f32x4_mul wasm_f32x4_ne
  wasm_f32x4_nearest wasm_f32x4_neg wasm_f32x4_pmax wasm_f32x4_pmin
  wasm_f32x4_replace_lane wasm_f32x4_splat wasm_f32x4_sqrt wasm_f32x4_sub
  wasm_f32x4_trunc wasm_f64x2_abs wasm_f64x2_add wasm_f64x2_ceil wasm_f64x2_const
  wasm_f64x2_const_splat wasm_f64x2_convert_low_i32x4 wasm_f64x2_convert_low_u32x4
  wasm_f64x2_div wasm_f64x2_eq wasm_f64x2_extract_lane wasm_f64x2_floor wasm_f64x2_ge
  wasm_f64x2_gt wasm_f64x2_le wasm_f64x2_lt wasm_f64x2_make wasm_f64x2_max
  wasm_f64x2_min wasm_f64x2_mul wasm_f64x2_ne wasm_f64x2_nearest wasm_f64x2_neg
  wasm_f64x2_pmax wasm_f64x2_pmin wasm_f64x2_promote_low_f32x4 wasm_f64x2_replace_lane
  wasm_f64x2_splat wasm_f64x2_sqrt wasm_f64x2_sub wasm_f64x2_trunc wasm_i16x8_abs
  wasm_i16x8_add wasm_i16x8_add_sat wasm_i16x8_add_saturate wasm_i16x8_all_true
  wasm_i16x8_any_true wasm_i16x8_bitmask wasm_i16x8_const wasm_i16x8_const_splat
  wasm_i16x8_eq wasm_i16x8_extadd_pairwise_i8x16 wasm_i16x8_extend_high_i8x16
  wasm_i16x8_extend_low_i8x16 wasm_i16x8_extmul_high_i8x16 wasm_i16x8_extmul_low_i8x16
  wasm_i16x8_extract_lane wasm_i16x8_ge wasm_i16x8_gt wasm_i16x8_le wasm_i16x8_load8x8
  wasm_i16x8_load_8x8 wasm_i16x8_lt wasm_i16x8_make wasm_i16x8_max wasm_i16x8_min
  wasm_i16x8_mul wasm_i16x8_narrow_i32x4 wasm_i16x8_ne wasm_i16x8_neg
  wasm_i16x8_q15mulr_sat wasm_i16x8_replace_lane wasm_i16x8_shl wasm_i16x8_shr
  wasm_i16x8_shuffle wasm_i16x8_splat wasm_i16x8_sub wasm_i16x8_sub_sat
  wasm_i16x8_sub_saturate wasm_i16x8_widen_high_i8x16 wasm_i16x8_widen_high_u8x16
  wasm_i16x8_widen_low_i8x16 wasm_i16x8_widen_low_u8x16 wasm_i32x4_abs wasm_i32x4_add
  wasm_i32x4_all_true wasm_i32x4_any_true wasm_i32x4_bitmask wasm_i32x4_const
  wasm_i32x4_const_splat wasm_i32x4_dot_i16x8 wasm_i32x4_eq
  wasm_i32x4_extadd_pairwise_i16x8 wasm_i32x4_extend_high_i16x8
  wasm_i32x4_extend_low_i16x8 wasm_i32x4_extmul_high_i16x8 wasm_i32x4_extmul_low_i16x8
  wasm_i32x4_extract_lane wasm_i32x4_ge wasm_i32x4_gt wasm_i32x4_le wasm_i32x4_load16x4
  wasm_i32x4_load_16x4 wasm_i32x4_lt wasm_i32x4_make wasm_i32x4_max wasm_i32x4_min
  wasm_i32x4_mul wasm_i32x4_ne wasm_i32x4_neg wasm_i32x4_replace_lane wasm_i32x4_shl
  wasm_i32x4_shr wasm_i32x4_shuffle wasm_i32x4_splat wasm_i32x4_sub
  wasm_i32x4_trunc_sat_f32x4 wasm_i32x4_trunc_sat_f64x2_zero
  wasm_i32x4_trunc_saturate_f32x4 wasm_i32x4_widen_high_i16x8
  wasm_i32x4_widen_high_u16x8 wasm_i32x4_widen_low_i16x8 wasm_i32x4_widen_low_u16x8
  wasm_i64x2_abs wasm_i64x2_add wasm_i64x2_all_true wasm_i64x2_bitmask wasm_i64x2_const
  wasm_i64x2_const_splat wasm_i64x2_eq wasm_i64x2_extend_high_i32x4
  wasm_i64x2_extend_low_i32x4 wasm_i64x2_extmul_high_i32x4 wasm_i64x2_extmul_low_i32x4
  wasm_i64x2_extract_lane wasm_i64x2_ge wasm_i64x2_gt wasm_i64x2_le wasm_i64x2_load32x2
  wasm_i64x2_load_32x2 wasm_i64x2_lt wasm_i64x2_make wasm_i64x2_mul wasm_i64x2_ne
  wasm_i64x2_neg wasm_i64x2_replace_lane wasm_i64x2_shl wasm_i64x2_shr
  wasm_i64x2_shuffle wasm_i64x2_splat wasm_i64x2_sub wasm_i8x16_abs wasm_i8x16_add
  wasm_i8x16_add_sat wasm_i8x16_add_saturate wasm_i8x16_all_true wasm_i8x16_any_true
  wasm_i8x16_bitmask wasm_i8x16_const wasm_i8x16_const_splat wasm_i8x16_eq
  wasm_i8x16_extract_lane wasm_i8x16_ge wasm_i8x16_gt wasm_i8x16_le wasm_i8x16_lt
  wasm_i8x16_make wasm_i8x16_max wasm_i8x16_min wasm_i8x16_narrow_i16x8 wasm_i8x16_ne
  wasm_i8x16_neg wasm_i8x16_popcnt wasm_i8x16_replace_lane wasm_i8x16_shl wasm_i8x16_shr
  wasm_i8x16_shuffle wasm_i8x16_splat wasm_i8x16_sub wasm_i8x16_sub_sat
  wasm_i8x16_sub_saturate wasm_i8x16_swizzle wasm_u16x8_add_sat wasm_u16x8_add_saturate
  wasm_u16x8_avgr wasm_u16x8_const wasm_u16x8_const_splat
  wasm_u16x8_extadd_pairwise_u8x16 wasm_u16x8_extend_high_u8x16
  wasm_u16x8_extend_low_u8x16 wasm_u16x8_extmul_high_u8x16 wasm_u16x8_extmul_low_u8x16
  wasm_u16x8_extract_lane wasm_u16x8_ge wasm_u16x8_gt wasm_u16x8_le wasm_u16x8_load8x8
  wasm_u16x8_load_8x8 wasm_u16x8_lt wasm_u16x8_make wasm_u16x8_max wasm_u16x8_min
  wasm_u16x8_narrow_i32x4 wasm_u16x8_replace_lane wasm_u16x8_shr wasm_u16x8_splat
  wasm_u16x8_sub_sat wasm_u16x8_sub_saturate wasm_u32x4_const wasm_u32x4_const_splat
  wasm_u32x4_extadd_pairwise_u16x8 wasm_u32x4_extend_high_u16x8
  wasm_u32x4_extend_low_u16x8 wasm_u32x4_extmul_high_u16x8 wasm_u32x4_extmul_low_u16x8
  wasm_u32x4_extract_lane wasm_u32x4_ge wasm_u32x4_gt wasm_u32x4_le wasm_u32x4_load16x4
  wasm_u32x4_load_16x4 wasm_u32x4_lt wasm_u32x4_make wasm_u32x4_max wasm_u32x4_min
  wasm_u32x4_replace_lane wasm_u32x4_shr wasm_u32x4_splat wasm_u32x4_trunc_sat_f32x4
  wasm_u32x4_trunc_sat_f64x2_zero wasm_u32x4_trunc_saturate_f32x4 wasm_u64x2_const
  wasm_u64x2_const_splat wasm_u64x2_extend_high_u32x4 wasm_u64x2_extend_low_u32x4
  wasm_u64x2_extmul_high_u32x4 wasm_u64x2_extmul_low_u32x4 wasm_u64x2_extract_lane
  wasm_u64x2_load32x2 wasm_u64x2_load_32x2 wasm_u64x2_make wasm_u64x2_replace_lane
  wasm_u64x2_shr wasm_u64x2_splat wasm_u8x16_add_sat wasm_u8x16_add_saturate
  wasm_u8x16_avgr wasm_u8x16_const wasm_u8x16_const_splat wasm_u8x16_extract_lane
  wasm_u8x16_ge wasm_u8x16_gt wasm_u8x16_le wasm_u8x16_lt wasm_u8x16_make wasm_u8x16_max
  wasm_u8x16_min wasm_u8x16_narrow_i16x8 wasm_u8x16_replace_lane wasm_u8x16_shr
  wasm_u8x16_splat wasm_u8x16_sub_sat wasm_u8x16_sub_saturate wasm_v128_and
  wasm_v128_andnot wasm_v128_any_true wasm_v128_bitselect wasm_v128_load
  wasm_v128_load16_lane wasm_v128_load16_splat wasm_v128_load32_lane
  wasm_v128_load32_splat wasm_v128_load32_zero wasm_v128_load64_lane
  wasm_v128_load64_splat wasm_v128_load64_zero wasm_v128_load8_lane
  wasm_v128_load8_splat wasm_v128_not wasm_v128_or wasm_v128_store
  wasm_v128_store16_lane wasm_v128_store32_lane wasm_v128_store64_lane
  wasm_v128_store8_lane wasm_v128_xor wasm_v16x8_load_splat wasm_v16x8_shuffle
  wasm_v32x4_load_splat wasm_v32x4_shuffle wasm_v64x2_load_splat wasm_v64x2_shuffle
  wasm_v8x16_load_splat wasm_v8x16_shuffle wasm_v8x16_swizzle
wchar.h: btowc fgetwc fgetwc_unlocked fgetws fgetws_unlocked fputwc fputwc_unlocked
  fputws fputws_unlocked fwide fwprintf fwscanf getwc getwc_unlocked getwchar
  getwchar_unlocked mbrlen mbrtowc mbsinit mbsnrtowcs mbsrtowcs open_wmemstream putwc
  putwc_unlocked putwchar putwchar_unlocked swprintf swscanf ungetwc vfwprintf vfwscanf
  vswprintf vswscanf vwprintf vwscanf wcpcpy wcpncpy wcrtomb wcscasecmp wcscasecmp_l
  wcscat wcschr wcscmp wcscoll wcscoll_l wcscpy wcscspn wcsdup wcsftime wcsftime_l
  wcslen wcsncasecmp wcsncasecmp_l wcsncat wcsncmp wcsncpy wcsnlen wcsnrtombs wcspbrk
  wcsrchr wcsrtombs wcsspn wcsstr wcstod wcstof wcstok wcstol wcstold wcstoll wcstoul
  wcstoull wcswcs wcswidth wcsxfrm wcsxfrm_l wctob wcwidth wmemchr wmemcmp wmemcpy
  wmemmove wmemset wprintf wscanf
wctype.h: iswalnum iswalnum_l iswalpha iswalpha_l iswblank iswblank_l iswcntrl
  iswcntrl_l iswctype iswctype_l iswdigit iswdigit_l iswgraph iswgraph_l iswlower
  iswlower_l iswprint iswprint_l iswpunct iswpunct_l iswspace iswspace_l iswupper
  iswupper_l iswxdigit iswxdigit_l towctrans towctrans_l towlower towlower_l towupper
  towupper_l wctrans wctrans_l wctrans_t wctype wctype_l wctype_t wint_t
"""

DECLARED: dict[str, str] = _parse(_DECLARED_TABLE)


if __name__ == "__main__":       # the table (--lower: LOWER's, --declared: DECLARED's),
    #                                from the toolchain installed
    import shutil
    import sys

    from . import bindgen
    clang = shutil.which(os.environ.get("WSUPER_CLANG", "clang")) or "clang"
    if sys.argv[1:] == ["--declared"]:
        table = _table(declared_from_toolchain(clang, bindgen._C_HEADERS))
    else:
        table = _table(from_toolchain(clang, bindgen._C_HEADERS,
                                      _LOWER_SHAPE if sys.argv[1:] == ["--lower"] else _SHAPE))
    try:
        print(table, flush=True)
    except BrokenPipeError:
        # a reader that goes away (`| head`, a pager quit early; docs/plugins.md says
        # to run this) ends it quietly, as it ends `wsuper`: it was a traceback
        from . import stderr
        stderr.gone(sys.stdout)
