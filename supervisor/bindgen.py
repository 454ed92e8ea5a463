"""`wsuper bindgen SCHEMA.capnp -o DIR`: C bindings for a schema's interfaces.

For every interface the header has client stubs (call a capability as a
function on its handle), a server skeleton (`NAME_dispatch`, calling the
`NAME_serve_METHOD` functions the plugin defines), and C types for every
struct, enum and list it uses.  Capabilities are `wsuper_cap` handles.  The
generated code needs only `wsuper.h` (copied next to it), which holds the
wire format: builder, checked reader and the calls of the guest ABI.

Written for wsuper rather than taken from a Cap'n Proto C generator: the C
generators that exist (c-capnproto) produce code for their own runtime and
message ownership model, not for the handle-based guest ABI, and the part
that matters here -- a reader that trusts nothing -- is small.

Supported field types: Void, Bool, integers, floats, enums, Text, Data,
structs, interfaces (handles), and lists of any of those but lists.  Unions,
groups, AnyPointer, lists of lists and pointer-field defaults are refused
with a message that names the field.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import stat
import tempfile

import capnp_schemas
import compartments
from capnp_schemas.text import first_line, printable

from . import cmacros

SDK_HEADER = os.path.join(os.path.dirname(os.path.abspath(compartments.__file__)), "sdk",
                          "wsuper.h")

# capnp type -> (C type, bits, list typedef, list element size code)
_PRIM = {
    "bool": ("bool", 1, "wsuper_list_bool", 1),
    "int8": ("int8_t", 8, "wsuper_list_i8", 2), "uint8": ("uint8_t", 8, "wsuper_list_u8", 2),
    "int16": ("int16_t", 16, "wsuper_list_i16", 3),
    "uint16": ("uint16_t", 16, "wsuper_list_u16", 3),
    "int32": ("int32_t", 32, "wsuper_list_i32", 4),
    "uint32": ("uint32_t", 32, "wsuper_list_u32", 4),
    "int64": ("int64_t", 64, "wsuper_list_i64", 5),
    "uint64": ("uint64_t", 64, "wsuper_list_u64", 5),
    "float32": ("float", 32, "wsuper_list_f32", 4), "float64": ("double", 64, "wsuper_list_f64", 5),
    "enum": ("uint16_t", 16, "wsuper_list_u16", 3),
}
_C_KEYWORDS = set("""auto break case char const continue default do double else enum extern
float for goto if inline int long register restrict return short signed sizeof static struct
switch typedef union unsigned void volatile while bool""".split())
#: Lower-case names a field, struct or enum cannot have in C either, so they get a
#: trailing _ as keywords do: GNU C's and C23's keywords, and the object-like macros
#: of the C library a plugin includes beside the header (stdio.h's `stdout` is
#: `(stdout)`: a field `stdout` made `out->(stdout)`), stdbool's, iso646's.
_C_RESERVED = _C_KEYWORDS | set("""asm typeof true false alignas alignof constexpr nullptr
thread_local static_assert noreturn complex imaginary stdin stdout stderr errno and or not xor
bitand bitor compl memset""".split())
#: Lower-case names the headers wsuper.h includes (stdbool, stddef, stdint, stdlib,
#: string; wasi-libc's, with its POSIX and BSD extras) declare at file scope: a
#: struct or enum so named was a C type of that name, and a schema with `struct
#: Index` (string.h's index()), `enum Random` or `struct Timespec` gave a header
#: that did not compile ("redefinition of 'index' as different kind of symbol").
#: Such a type gets a trailing _ as a keyword does; a function bindgen would name
#: so (interface At, method quickExit: at_quick_exit) is refused.
_C_LIBRARY = frozenset("""a64l abort abs aligned_alloc alloca arc4random arc4random_buf
arc4random_uniform at_quick_exit atexit atof atoi atol atoll bcmp bcopy bsearch bzero calloc
clearenv div drand48 erand48 exit explicit_bzero ffs ffsl ffsll free getenv getsubopt index
initstate iovec jrand48 l64a labs lcong48 ldiv llabs lldiv lrand48 malloc mblen mbstowcs
mbtowc memccpy memchr memcmp memcpy memmove memset mrand48 nrand48 posix_memalign putenv
qsort quick_exit rand rand_r random realloc rindex seed48 setenv setkey setstate srand
srand48 srandom stpcpy stpncpy strcasecmp strcasecmp_l strcat strchr strcmp strcoll
strcoll_l strcpy strcspn strdup strerror strerror_l strerror_r strlcat strlcpy strlen
strncasecmp strncasecmp_l strncat strncmp strncpy strndup strnlen strpbrk strrchr strsep
strsignal strspn strstr strtod strtof strtok strtok_r strtol strtold strtoll strtoul
strtoull strxfrm strxfrm_l system timespec timeval unsetenv wcstombs wctomb
div_t int16_t int32_t int64_t int8_t int_fast16_t int_fast32_t int_fast64_t int_fast8_t
int_least16_t int_least32_t int_least64_t int_least8_t intmax_t intptr_t ldiv_t lldiv_t
locale_t max_align_t ptrdiff_t size_t suseconds_t time_t uint16_t uint32_t uint64_t
uint8_t uint_fast16_t uint_fast32_t uint_fast64_t uint_fast8_t uint_least16_t
uint_least32_t uint_least64_t uint_least8_t uintmax_t uintptr_t wchar_t
offsetof""".split())
#: Lower-case names a plugin's own code defines at file scope, which no header
#: declares: a program's `main` (the C runtime's _start calls it).  `struct Main`
#: or `enum Main` was a type `main`, and a program that included the header did
#: not compile ("redefinition of 'main' as different kind of symbol").  Such a
#: type gets a trailing _ as a keyword does.
_PLUGIN_OWN = frozenset({"main"})


class BindgenError(Exception):
    """The schema uses something the C bindings do not support; the text names it.

    One line whatever it quotes: a schema's file name (or an imported file's, which
    the schema chose) may hold a newline or a terminal's escape sequence, which the
    error printed as they were (`wsuper: error: evil` and, on a line of its own in
    red, whatever the name said next).  Escaped here, the one choke point."""

    def __init__(self, text: str):
        super().__init__(printable(text))


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _ident(name: str) -> str:
    s = snake(name)
    # a field is a member (any name will do) but also a parameter of a client stub,
    # where one named as a type (`sizeT :UInt32`) hid the type from the parameters after it,
    # and one named as the SDK's (`wsuperText`, `wsuperCap`, `wsuperInvoke`) hid its type
    # from them, or its function from the stub's body, which calls them
    # (and one named as a lower-case macro of the C library, `stMtime`: <sys/stat.h>'s
    # st_mtime, cmacros.LOWER, was `st_mtim.tv_sec` in a plugin that included it first)
    return s + "_" if s in _C_RESERVED or (s.endswith("_t") and s in _C_LIBRARY) \
        or s in cmacros.LOWER or s.startswith(_SDK_PREFIXES[0]) else s


class _Struct:
    def __init__(self, schema, cname: str):
        self.schema = schema
        self.cname = cname
        node = schema.node
        self.dwords = node.struct.dataWordCount
        self.ptrs = node.struct.pointerCount
        self.fields: list[tuple] = []     # (kind, c name, details...)


class Generator:
    def __init__(self, path: str):
        self.path = path
        try:
            self.module = capnp_schemas.load(path)
        except capnp_schemas.SchemaError as e:
            raise BindgenError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - pycapnp's parser errors are KjExceptions
            raise BindgenError(f"{path}: cannot parse: {first_line(e)}") from None
        self.base = os.path.splitext(os.path.basename(path))[0]
        self.structs: dict[int, _Struct] = {}
        self.order: list[_Struct] = []
        self.enums: dict[int, tuple] = {}
        self.interfaces: list[tuple] = []   # (schema, cname)
        self.list_types: dict[str, str] = {}   # typedef name -> element C type
        self._displays: dict[int, str] = {}    # enum id -> its name in the schema
        self._enum_files: dict[int, str] = {}  # enum id -> its file
        self.list_ids: dict[str, int] = {}     # list typedef name -> its element's node id
        self._unread: collections.deque = collections.deque()  # structs whose fields wait
        self._collect(self.module, self.module.schema.node)
        self._check_names()

    # ------------------------------------------------------------ collecting

    def _collect(self, parent, node):
        """Every struct, enum and interface declared in the file, nested ones too, in
        the file's order; then the structs their fields reach.  Both walks keep
        their own stack and queue: a schema may nest types a thousand deep, or
        chain a thousand structs each holding the next, and Python's recursion
        ended in a RecursionError traceback."""
        stack = [(parent, iter(node.nestedNodes))]
        while stack:
            parent, nested_nodes = stack[-1]
            nested = next(nested_nodes, None)
            if nested is None:
                stack.pop()
                continue
            child = getattr(parent, nested.name, None)
            schema = getattr(child, "schema", None)
            if schema is None:
                continue
            which = schema.node.which()
            if which == "struct":
                self._struct(schema)
            elif which == "enum":
                self._enum(schema)
            elif which == "interface":
                self._interface(schema)
            stack.append((child, iter(schema.node.nestedNodes)))
        while self._unread:
            self._fields(self._unread.popleft())

    def _name(self, schema) -> str:
        display = _scoped(schema)[1]
        return "_".join(snake(p) for p in display.split("."))

    def _type_name(self, schema) -> str:
        """A struct's or enum's C type name (a keyword gets a trailing _)."""
        name = self._name(schema)
        # (one ending in _t is refused: _reserved, as for every such type name)
        return name + "_" if name in _C_RESERVED or (
            (name in _C_LIBRARY or name in _PLUGIN_OWN or name in cmacros.LOWER
             or name in cmacros.DECLARED)
            and not name.endswith("_t")) \
            else name

    def _enum(self, schema) -> str:
        nid = schema.node.id
        if nid not in self.enums:
            self.enums[nid] = (self._type_name(schema), dict(schema.enumerants))
            self._enum_files[nid], self._displays[nid] = _scoped(schema)
        return self.enums[nid][0]

    def _interface(self, schema):
        if any(s.node.id != schema.node.id for s in schema.superclasses):
            raise BindgenError(f"{self._where(schema)}: interface extends another "
                               "interface; inheritance is not supported")
        cname = self._name(schema)
        self.interfaces.append((schema, cname))
        for ordinal, method in enumerate(schema.node.interface.methods):
            m = schema.methods[method.name]
            for kind, s in (("params", m.param_type), ("results", m.result_type)):
                if s.node.scopeId == 0:      # the implicit "(a, b)" struct of the method
                    self._struct(s, f"{cname}_{snake(method.name)}_{kind}")
                else:
                    self._struct(s)

    def _struct(self, schema, cname: str | None = None) -> _Struct:
        """The struct's C binding; its fields are read later (_collect), so that a
        chain of structs does not recurse."""
        nid = schema.node.id
        if nid in self.structs:
            return self.structs[nid]
        st = self.structs[nid] = _Struct(schema, cname or self._type_name(schema))
        self._unread.append(st)
        return st

    def _fields(self, st: _Struct):
        schema = st.schema
        where = self._where(schema)
        if schema.node.struct.discriminantCount:
            raise BindgenError(f"{where}: unions are not supported")
        fields: dict[str, str] = {}       # C name -> the field's own
        for field in schema.node.struct.fields:
            fwhere = self._where(schema, field.name)
            other = fields.setdefault(_ident(field.name), field.name)
            if other != field.name:
                raise BindgenError(f"{where}: fields {other} and {field.name} would both be "
                                   f"{_ident(field.name)} in C; rename one ({_RENAME})")
            if field.which() == "group":
                raise BindgenError(f"{fwhere}: groups are not supported")
            slot = field.slot
            kind = slot.type.which()
            if kind == "void":
                continue
            fschema = schema.fields[field.name].schema if kind in (
                "struct", "list", "enum", "interface") else None
            st.fields.append(self._field(fwhere, _ident(field.name), kind, slot, fschema))
        self.order.append(st)

    def _field(self, where, name, kind, slot, fschema) -> tuple:
        if kind in _PRIM:
            default = getattr(slot.defaultValue, kind)
            ctype = self._enum(fschema) if kind == "enum" else _PRIM[kind][0]
            return ("prim", name, kind, slot.offset, _default_bits(kind, default), ctype)
        if slot.hadExplicitDefault:
            raise BindgenError(f"{where}: default values of {kind} fields are not supported")
        if kind in ("text", "data"):
            return (kind, name, slot.offset)
        if kind == "interface":
            return ("cap", name, slot.offset)
        if kind == "struct":
            return ("struct", name, slot.offset, self._struct(fschema).cname)
        if kind == "list":
            elem = slot.type.list.elementType.which()
            if elem in _PRIM:
                ctype = self._enum(fschema.elementType) if elem == "enum" else _PRIM[elem][0]
                return ("plist", name, slot.offset, elem, _PRIM[elem][2], ctype)
            if elem in ("text", "data"):
                return ("plist", name, slot.offset, elem, f"wsuper_list_{elem}", f"wsuper_{elem}")
            if elem == "interface":
                return ("plist", name, slot.offset, elem, "wsuper_list_cap", "wsuper_cap")
            if elem == "struct":
                sub = self._struct(fschema.elementType)
                self.list_types[f"{sub.cname}_list"] = sub.cname
                self.list_ids[f"{sub.cname}_list"] = fschema.elementType.node.id
                return ("slist", name, slot.offset, sub.cname)
            raise BindgenError(f"{where}: List({elem}) is not supported")
        raise BindgenError(f"{where}: {kind} fields are not supported")

    def _check_names(self):
        """Every name the header declares, macros included, is declared once and is
        nobody else's: two schema names that become one C name (`fooBar` and
        `fooBAR`, `Foo.Bar` and `FooBar`, a method `id` and the interface's id
        STORE_ID, a method `dispatch` and the skeleton) are refused naming both,
        and so is a name the C SDK or the C library owns (`wsuper_...`,
        `WSUPER_OK`, `size_t`).  A macro defined twice was only a warning, and the
        second value won: `STORE_ID` became 0 and no call reached the store."""
        seen: dict[str, str] = {}

        def claim(ident: str, what: str, is_type: bool = False):
            if not _C_IDENT.fullmatch(ident):       # never text of a file's name, say
                raise BindgenError(f"{self.path}: {what} would be {ident!r} in C, which is "
                                   "no C identifier")
            why = _reserved(ident, is_type)
            if why:
                raise BindgenError(f"{self.path}: {what} would be {ident} in C, which {why}; "
                                   f"rename it ({_RENAME})")
            other = seen.setdefault(ident, what)
            if other is not what:       # each name is claimed once: a second claim collides
                raise BindgenError(f"{self.path}: {other} and {what} would both be {ident} in C; "
                                   f"rename one ({_RENAME})")

        for nid, (cname, values) in self.enums.items():
            what = f"enum {self._display(nid)} ({self._enum_files[nid]})"
            claim(cname, what, True)
            for k in values:
                claim(_macro(cname, k), f"enumerant {self._display(nid)}.{k}")
        for st in self.order:
            what = self._what(st.schema)
            claim(st.cname, what, True)
            claim(f"{st.cname}_fill", f"{what} (its _fill function)")
            claim(f"{st.cname}_load", f"{what} (its _load function)")
            claim(f"{st.cname.upper()}_DWORDS", f"{what} (its _DWORDS constant)")
            claim(f"{st.cname.upper()}_PTRS", f"{what} (its _PTRS constant)")
        for lname, elem in self.list_types.items():
            claim(lname, f"lists of {elem}", True)
        for schema, cname in self.interfaces:
            name = _scoped(schema)[1]
            if f"WSUPER_SERVE_{cname.upper()}" in _SDK_MACROS:
                raise BindgenError(f"{self.path}: interface {name} would be served by "
                                   f"defining WSUPER_SERVE_{cname.upper()}, a macro of the "
                                   f"C SDK (wsuper.h); rename it ({_RENAME})")
            claim(f"{cname.upper()}_ID", f"the id of interface {name}")
            claim(f"{cname}_dispatch", f"the dispatch function of interface {name}")
            for ordinal, method in enumerate(schema.node.interface.methods):
                what, m = f"method {name}.{method.name}", snake(method.name)
                claim(_macro(cname, method.name), f"{what} (its ordinal)")
                claim(f"{cname}_{m}", f"{what} (its client stub)")
                claim(f"{cname}_serve_{m}", f"{what} (its server function)")

    def _where(self, schema, field: str | None = None) -> str:
        """A declaration (and one of its fields) as the schema names it, in the file
        that declares it: `kv.capnp: Outer.Inner.v`, `kv.capnp: Store.get, parameter
        key`, `sub/v.capnp (imported by kv.capnp): V`.  The errors of _fields named
        the C name in the file bindgen was given (`kv.capnp: store_get_params.key`,
        `kv.capnp: v` for a struct of the imported file)."""
        file, display = _scoped(schema)
        mine = self.module.schema.node.displayName
        where = self.path if not file or file == mine else f"{file} (imported by {self.path})"
        for suffix, kind in (("$Params", "parameter"), ("$Results", "result")):
            if display.endswith(suffix):
                display = display[:-len(suffix)]
                return f"{where}: {display}, {kind} {field}" if field else \
                    f"{where}: the {kind}s of {display}"
        return f"{where}: {display}.{field}" if field else f"{where}: {display}"

    def _display(self, nid) -> str:
        return self._displays[nid]

    def _what(self, schema) -> str:
        file, display = _scoped(schema)
        mine = self.module.schema.node.displayName
        where = f" (of {file})" if file and file != mine else ""
        for suffix, kind in (("$Params", "the params"), ("$Results", "the results")):
            if display.endswith(suffix):
                return f"{kind} of {display[:-len(suffix)]}{where}"
        return f"struct {display}{where}"

    # ------------------------------------------------------------ emitting

    def header(self) -> str:
        # the file's id too: a-b.capnp and a_b.capnp (or café.capnp and caf_.capnp) had
        # one guard, and whichever header came second was silently empty
        guard = (f"WSUPER_GEN_{re.sub(r'[^A-Za-z0-9]', '_', self.base).upper()}_"
                 f"{self.module.schema.node.id:016X}_H")
        out = [f"/* Generated by `wsuper bindgen` from {_comment(os.path.basename(self.path))}: "
               "do not edit.",
               " * Calls: NAME_METHOD(arena, cap, params..., &results) -> 0 or WSUPER_E_*",
               " * (arena.error says why).  Serving: #define WSUPER_SERVE_NAME before",
               " * including, define NAME_serve_METHOD(), export wsuper_dispatch calling",
               " * NAME_dispatch() (WSUPER_SERVE_ONLY(NAME) does that).  docs/plugins.md */",
               f"#ifndef {guard}", f"#define {guard}", "", '#include "wsuper.h"', ""]
        # Every type is emitted under a guard of its own, by node id: the headers of
        # two schemas that import a third (or two with a `-> stream` method) each hold
        # its types, and a plugin includes both.
        for nid, (cname, values) in self.enums.items():
            body = [f"typedef uint16_t {cname};"]
            for k, v in values.items():
                body += _define(_macro(cname, k), str(v))
            out += _once(nid, "ENUM", body) + [""]
        for st in self.order:
            out += _claim(st.cname, st.schema)
            out += _once(st.schema.node.id, "TYPEDEF", [f"typedef struct {st.cname} {st.cname};"])
        for lname, elem in self.list_types.items():
            out += _once(self.list_ids[lname], "LIST", [
                f"typedef struct {lname} {{ struct {elem} *items; uint32_t len; }} {lname};"])
        out.append("")
        for st in self.order:
            body = [f"struct {st.cname} {{"]
            for f in st.fields:
                body.append(f"  {self._ctype(f)} {f[1]};")
            if not st.fields:
                body.append("  char unused_;   /* C has no empty structs */")
            body.append("};")
            body.append(f"enum {{ {st.cname.upper()}_DWORDS = {st.dwords}, "
                        f"{st.cname.upper()}_PTRS = {st.ptrs} }};")
            out += _once(st.schema.node.id, "STRUCT", body)
        out.append("")
        for st in self.order:
            out += _once(st.schema.node.id, "DECLARED", [
                f"static void {st.cname}_fill(wsuper_builder *b, uint32_t at, "
                f"const struct {st.cname} *v) WSUPER_UNUSED;",
                f"static void {st.cname}_load(wsuper_reader *r, wsuper_arena *a, "
                f"wsuper_loc s, struct {st.cname} *out) WSUPER_UNUSED;"])
        out.append("")
        for st in self.order:
            out += _once(st.schema.node.id, "DEFINED", self._fill(st) + self._load(st))
        for schema, cname in self.interfaces:
            out += self._client(schema, cname)
        for schema, cname in self.interfaces:
            out += self._server(schema, cname)
        out += [f"#endif /* {guard} */", ""]
        return "\n".join(out)

    def _ctype(self, f) -> str:
        kind = f[0]
        if kind == "prim":
            return f[5]
        if kind in ("text", "data"):
            return f"wsuper_{kind}"
        if kind == "cap":
            return "wsuper_cap"
        if kind == "struct":
            return f"{f[3]} *"
        if kind == "plist":
            return f[4]
        return f"{f[3]}_list"

    @staticmethod
    def _ptr(st, index) -> str:
        return f"at + {st.dwords + index}"

    def _fill(self, st) -> list[str]:
        out = [f"static void {st.cname}_fill(wsuper_builder *b, uint32_t at, "
               f"const struct {st.cname} *v) {{"]
        if not st.fields:
            out.append("  (void)b; (void)at; (void)v;")
        for f in st.fields:
            kind, name = f[0], f[1]
            if kind == "prim":
                out.append("  " + _set_prim(f[2], "at", f[3], f"v->{name}", f[4]) + ";")
            elif kind in ("text", "data"):
                out.append(f"  wsuper_set_{kind}(b, {self._ptr(st, f[2])}, v->{name});")
            elif kind == "cap":
                out.append(f"  wsuper_set_cap(b, {self._ptr(st, f[2])}, v->{name});")
            elif kind == "struct":
                sub = self._by_name(f[3])
                out.append(f"  if (v->{name}) {f[3]}_fill(b, wsuper_new_struct(b, "
                           f"{self._ptr(st, f[2])}, {sub.dwords}, {sub.ptrs}), v->{name});")
            elif kind == "plist":
                elem, bits = f[3], _bits(f[3])
                code = _PRIM[elem][3] if elem in _PRIM else 6
                out.append(f"  if (v->{name}.items) {{")
                out.append(f"    uint32_t l = wsuper_new_list(b, {self._ptr(st, f[2])}, {code}, "
                           f"v->{name}.len);")
                out.append(f"    for (uint32_t i = 0; i < v->{name}.len && !b->failed; i++) "
                           + _set_elem(elem, bits, f"v->{name}.items[i]") + ";")
                out.append("  }")
            elif kind == "slist":
                sub = self._by_name(f[3])
                out.append(f"  if (v->{name}.items) {{")
                out.append(f"    uint32_t l = wsuper_new_struct_list(b, {self._ptr(st, f[2])}, "
                           f"v->{name}.len, {sub.dwords}, {sub.ptrs});")
                out.append(f"    for (uint32_t i = 0; i < v->{name}.len && !b->failed; i++) "
                           f"{f[3]}_fill(b, l + i * {sub.dwords + sub.ptrs}, &v->{name}.items[i]);")
                out.append("  }")
        return out + ["}", ""]

    def _load(self, st) -> list[str]:
        out = [f"static void {st.cname}_load(wsuper_reader *r, wsuper_arena *a, wsuper_loc s, "
               f"struct {st.cname} *out) {{"]
        out.append("  (void)a;")
        if not st.fields:
            out.append("  (void)r; (void)s; (void)out;")
        for f in st.fields:
            kind, name = f[0], f[1]
            ptr = f"wsuper_ptr(s, {f[2]})" if kind != "prim" else None
            if kind == "prim":
                out.append(f"  out->{name} = " + _get_prim(f[2], f[3], f[4], _plain(f)) + ";")
            elif kind in ("text", "data"):
                out.append(f"  out->{name} = wsuper_get_{kind}(r, {ptr});")
            elif kind == "cap":
                out.append(f"  out->{name} = wsuper_get_cap(r, {ptr});")
            elif kind == "struct":
                out += [f"  {{ wsuper_loc t = wsuper_get_struct(r, {ptr});",
                        f"    out->{name} = t.present ? WSUPER_ARRAY(a, struct {f[3]}, 1) : NULL;",
                        f"    if (out->{name} && wsuper_enter(r)) {{ "
                        f"{f[3]}_load(r, a, t, out->{name}); r->depth--; }}",
                        f"    else if (t.present) {{ if (!out->{name}) wsuper_bad(r, {_NOMEM}); "
                        f"r->bad = true; out->{name} = NULL; }} }}"]
            elif kind == "plist":
                elem = f[3]
                code = _PRIM[elem][3] if elem in _PRIM else 6
                out += [f"  {{ uint32_t n, l = wsuper_get_list(r, {ptr}, {code}, &n);",
                        f"    out->{name}.items = WSUPER_ARRAY(a, {_plain(f)}, n);",
                        f"    out->{name}.len = out->{name}.items ? n : 0;",
                        f"    if (!out->{name}.items) wsuper_bad(r, {_NOMEM});",
                        f"    for (uint32_t i = 0; i < out->{name}.len; i++) out->{name}.items[i] = "
                        + _get_elem(elem, _plain(f)) + "; }"]
            elif kind == "slist":
                out += [f"  {{ uint32_t n; wsuper_loc first = wsuper_get_struct_list(r, {ptr}, &n);",
                        f"    out->{name}.items = WSUPER_ARRAY(a, struct {f[3]}, n);",
                        f"    out->{name}.len = out->{name}.items ? n : 0;",
                        f"    if (!out->{name}.items) wsuper_bad(r, {_NOMEM});",
                        f"    if (out->{name}.len && !wsuper_enter(r)) out->{name}.len = 0;",
                        f"    else if (out->{name}.len) {{",
                        f"      for (uint32_t i = 0; i < out->{name}.len && !r->bad; i++) "
                        f"{f[3]}_load(r, a, wsuper_element(first, i), &out->{name}.items[i]);",
                        "      r->depth--; } }"]
        return out + ["}", ""]

    def _by_name(self, cname) -> _Struct:
        return next(s for s in self.order if s.cname == cname)

    def _methods(self, schema, cname):
        for ordinal, method in enumerate(schema.node.interface.methods):
            m = schema.methods[method.name]
            yield (ordinal, snake(method.name), self.structs[m.param_type.node.id],
                   self.structs[m.result_type.node.id])

    def _client(self, schema, cname) -> list[str]:
        out = [f"/* ---- interface {_scoped(schema)[1]}: client */",
               *_define(f"{cname.upper()}_ID", f"UINT64_C({schema.node.id:#x})")]
        for ordinal, method in enumerate(schema.node.interface.methods):
            out += _define(_macro(cname, method.name), str(ordinal))
        out.append("")
        for ordinal, mname, params, results in self._methods(schema, cname):
            shown = f"{_scoped(schema)[1]}.{schema.node.interface.methods[ordinal].name}"
            args = ["wsuper_arena *arena_", "wsuper_cap cap_"]
            # types by their typedef names, unless a parameter of the same name (`point
            # :Point`) shadows one: then by struct tag (or uint16_t), which none shadows
            # a parameter is named as its field is, unless that is a function the stub
            # calls (`shadeM2ParamsFill` of method m2: shade_m2_params_fill), which it
            # would hide: then with a trailing _ (callers pass parameters by position)
            callees = {f"{params.cname}_fill", f"{results.cname}_load"}
            arg = {f[1]: f[1] + "_" if f[1] in callees else f[1] for f in params.fields}
            names = set(arg.values())
            for f in params.fields:
                t = self._ctype(f)
                if t.rstrip(" *") in names:
                    t = _shadowless(f)
                args.append(f"const {t}{arg[f[1]]}" if f[0] == "struct"
                            else f"{t} {arg[f[1]]}")
            if results.fields:
                rtype = results.cname if results.cname not in names else f"struct {results.cname}"
                args.append(f"{rtype} *out_")
            out.append(f"static int {cname}_{mname}({', '.join(args)}) WSUPER_UNUSED;")
            out.append(f"static int {cname}_{mname}({', '.join(args)}) {{")
            out.append(f"  struct {params.cname} in_;")
            out.append("  memset(&in_, 0, sizeof in_);")
            for f in params.fields:
                cast = f"(struct {f[3]} *)" if f[0] == "struct" else ""
                out.append(f"  in_.{f[1]} = {cast}{arg[f[1]]};")
            # the params' builder is the arena's, its buffer freed with it: in this
            # frame, a call cut short as it went out (a call past its call_time is
            # cut off at its wsuper_call) lost it for good, each time
            out += ["  wsuper_reader r_;",
                    "  wsuper_builder *b_ = wsuper_params_builder(arena_);",
                    "  if (!b_) {"]
            if results.fields:
                out.append("    memset(out_, 0, sizeof *out_);")
            out += ["    arena_->error = \"params not sent: out of memory\";",
                    "    return WSUPER_E_NOMEM;",
                    "  }",
                    f"  {params.cname}_fill(b_, wsuper_new_struct(b_, 0, {params.dwords}, "
                    f"{params.ptrs}), &in_);",
                    f"  int rc_ = wsuper_invoke(arena_, cap_, {cname.upper()}_ID, {ordinal}, "
                    "b_, &r_);"]
            if results.fields:
                # zeroed whatever the outcome (the params are encoded by now)
                out += ["  memset(out_, 0, sizeof *out_);",
                        "  if (rc_ != WSUPER_OK) return rc_;",
                        f"  {results.cname}_load(&r_, arena_, wsuper_root(&r_), out_);",
                        "  wsuper_release_unread(&r_, r_.bad);  /* what out_ does not hold */",
                        # all or nothing: the fields decoded before the fault hold
                        # handles just released, which a caller's clean-up released again
                        "  if (r_.bad) return memset(out_, 0, sizeof *out_), "
                        f"wsuper_error2(arena_, \"malformed results of {shown}: \", r_.why), "
                        "WSUPER_E_MESSAGE;",
                        "  return WSUPER_OK;"]
            else:
                out.append("  if (rc_ == WSUPER_OK) wsuper_release_unread(&r_, true);")
                out.append("  return rc_;")
            out += ["}", ""]
        return out

    def _server(self, schema, cname) -> list[str]:
        up = cname.upper()
        out = [f"/* ---- interface {_scoped(schema)[1]}: server */",
               f"#ifdef WSUPER_SERVE_{up}"]
        methods = list(self._methods(schema, cname))
        for ordinal, mname, params, results in methods:
            out.append(f"int {cname}_serve_{mname}(wsuper_arena *a, int32_t object, "
                       f"const struct {params.cname} *in, struct {results.cname} *out);")
        out += ["",
                f"static int32_t {cname}_dispatch(int32_t object, int64_t iface, int32_t method, "
                "int32_t len, int32_t ncaps) WSUPER_UNUSED;",
                f"static int32_t {cname}_dispatch(int32_t object, int64_t iface, int32_t method, "
                "int32_t len, int32_t ncaps) {",
                f"  if ((uint64_t)iface != {up}_ID) return WSUPER_E_UNIMPLEMENTED;",
                "  wsuper_reader r;", *(["  wsuper_builder *b;"] if methods else []),
                # (an interface without methods, a token the plugin hands out, has no
                # results to build: an unused `b` warned under -Wall, -Werror failed)
                "  uint32_t slot;",
                # a call served while the plugin waits in its own (B calls back), so
                # deep that its frames would reach the plugin's data: refused
                "  if (!wsuper_stack_left()) return wsuper_dispatch_refused(\"out of stack: "
                "calls nested too deep\", WSUPER_E_OVERLOADED);",
                # its arena off the stack: a call that never returns leaves it to
                # the next (wsuper_served_begin)
                "  wsuper_arena *a = wsuper_served_begin((uintptr_t)__builtin_frame_address(0), "
                "&slot);",
                "  if (!a) return wsuper_dispatch_refused(\"too many calls being served\", "
                "WSUPER_E_OVERLOADED);",
                "  int rc = wsuper_read_params(a, &r, len, ncaps);",
                "  if (rc == WSUPER_OK) switch (method) {"]
        for ordinal, mname, params, results in methods:
            shown = f"{_scoped(schema)[1]}.{schema.node.interface.methods[ordinal].name}"
            out += [f"  case {ordinal}: {{",
                    f"    struct {params.cname} in;", f"    struct {results.cname} out;",
                    "    memset(&in, 0, sizeof in);", "    memset(&out, 0, sizeof out);",
                    f"    {params.cname}_load(&r, a, wsuper_root(&r), &in);",
                    "    if (r.bad) { rc = WSUPER_E_MESSAGE; "
                    f"wsuper_error2(a, \"malformed params of {shown}: \", r.why); break; }}",
                    f"    rc = {cname}_serve_{mname}(a, object, &in, &out);",
                    "    if (rc != WSUPER_OK) break;",
                    # in the call's arena: freed with it if the call is cut short
                    "    if (!(b = wsuper_served_results(a, slot))) { rc = WSUPER_E_NOMEM; break; }",
                    f"    {results.cname}_fill(b, wsuper_new_struct(b, 0, {results.dwords}, "
                    f"{results.ptrs}), &out);",
                    "    rc = wsuper_send_results(b);",
                    # named as the results' fault, not the params' ("malformed message")
                    "    if (rc != WSUPER_OK) "
                    f"wsuper_error2(a, \"results of {shown} not sent: \", wsuper_unsent(b, rc));",
                    "    break;", "  }"]
        out += ["  default: rc = WSUPER_E_UNIMPLEMENTED;", "  }",
                "  if (rc != WSUPER_OK) rc = wsuper_dispatch_failed(a, rc);",
                "  wsuper_served_end(slot);", "  return rc;", "}", "#endif", ""]
        return out


_RENAME = "names are not on the wire: a copy of the schema may rename it"
#: a decoded array the plugin's memory could not hold (C's size of what a message holds)
_NOMEM = '"out of memory for what it holds"'
_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _scoped(schema) -> tuple[str, str]:
    """(its file, its name in the file: `Store.Item`, `Store.get$Params`).  The file
    is all before the *last* colon: a name in a file has none, but the file's path
    may (`import "a:b/x.capnp"`), and split at the first colon it gave C names
    such as `b/x_capnp:foo` -- text of a directory's name in the header's code."""
    file, _, name = schema.node.displayName.rpartition(":")
    return file, name


def _comment(text: str) -> str:
    """`text` (a file's name) safe inside a C comment: ASCII, and no `*/` to end it."""
    return text.encode("ascii", "backslashreplace").decode().replace("*/", "*\\/")

#: The C SDK's names (wsuper.h): functions, types, and enum constants such as
#: WSUPER_OK, which a generated macro would have replaced in all code after it.
_SDK_PREFIXES = ("wsuper_", "WSUPER_")
#: wsuper.h's macros that a generated WSUPER_SERVE_<INTERFACE> switch could be
_SDK_MACROS = frozenset({"WSUPER_SERVE_ONLY"})


def _reserved(ident: str, is_type: bool) -> str | None:
    """Why `ident` cannot be a generated C name, or None."""
    if ident.startswith(_SDK_PREFIXES):
        return "the C SDK (wsuper.h) reserves"
    if ident in _C_RESERVED:
        return "is a C keyword or a C library macro"
    if is_type and ident.endswith("_t"):
        return "the C library reserves for its types (names ending in _t)"
    if ident in _C_LIBRARY:
        return "the C library wsuper.h includes (stdlib.h, string.h, ...) declares"
    if ident in _PLUGIN_OWN:
        return "a plugin defines itself (a program's main)"
    if ident in cmacros.DECLARED:
        # a plugin that includes that header too: "static declaration of
        # 'clock_gettime' follows non-static declaration", "redefinition of 'fputc'"
        return f"<{cmacros.DECLARED[ident]}> of the C library declares"
    header = cmacros.MACROS.get(ident) or cmacros.LOWER.get(ident)
    if header:
        # included after the bindings, the header redefined it silently (system
        # headers warn of nothing): the plugin's code used the C library's value
        return (f"<{header}> defines as a macro (a plugin that includes it after these "
                "bindings would get its value, without a warning)")
    return None


def _macro(prefix: str, name: str) -> str:
    """The macro of an enumerant or a method's ordinal: COLOR_RED, STORE_GET."""
    return f"{prefix.upper()}_{snake(name).upper()}"


def _define(name: str, value: str) -> list[str]:
    """`#define name value`, refusing (#error) a macro of that name already defined
    with another value: by the C library (`enum Exit { failure @0; success @1; }`
    would make EXIT_SUCCESS 1), by another generated header, or by the plugin.
    A redefinition was only a warning, and the second value won."""
    return [f"#if defined({name}) && ({name}) != ({value})",
            f'#error "wsuper bindgen: {name} is already defined with another value"',
            f"#elif !defined({name})",
            f"#define {name} {value}",
            "#endif"]


def _claim(cname: str, schema) -> list[str]:
    """The C struct name `cname` claimed for the node of `schema` alone: two schemas
    that each declare a struct of one name (`struct Point` in a.capnp and in
    b.capnp, two types) gave headers whose inclusion in one C file failed with only
    the compiler's "redefinition of 'struct point'", naming no schema.  Now an
    #error names the struct (the compiler names the header).  The same node from
    two headers (a file both import, an identical copy) claims it with the same
    id, which is no error; each header in a C file of its own builds as before.
    (Enums of one name are one C type, uint16_t, and their constants are checked
    by _define.)"""
    # the schema's name for it (its file is the header the compiler names, and no
    # path goes into a header's code: test_a_colon_in_an_imported_files_path...)
    shown = re.sub(r"[^A-Za-z0-9_.$]", "?", _scoped(schema)[1])
    name, value = f"WSUPER_CNAME_{cname}", f"0x{schema.node.id:016x}u"
    return [f"#if defined({name}) && {name} != {value}",
            f'#error "wsuper bindgen: C struct {cname} (struct {shown} of this header\'s '
            f'schema) has the name of another type of a generated header included before: '
            f'rename one of them in its schema, or include the two headers in different C '
            f'files"',
            f"#elif !defined({name})",
            f"#define {name} {value}",
            "#endif"]


def _once(node_id: int, part: str, lines: list[str]) -> list[str]:
    """`lines` under a guard that is the node's own (WSUPER_GEN_<id>_<part>): a type
    another generated header (of a schema importing the same file) emitted already
    is not emitted again.  The guard's value is a digest of the lines: a header
    that would skip a *different* definition of that id (two schemas giving one id
    to two structs, or headers made from two versions of a shared file) stops the
    compiler at an #error, instead of its code using the other header's layout."""
    guard = f"WSUPER_GEN_{node_id:016X}_{part}"
    # 60 bits: a positive constant for the preprocessor's intmax_t arithmetic
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:15]
    sig = f"{guard}_SIG"
    return [f"#ifndef {guard}", f"#define {guard}", f"#define {sig} 0x{digest}", *lines,
            f"#elif !defined({sig}) || {sig} != 0x{digest}",
            f'#error "wsuper bindgen: node @0x{node_id:016x} ({part.lower()}) is defined '
            'differently by another generated header: two schemas give one id to two types, '
            'or the headers were made from two versions of one file (or of bindgen): '
            'regenerate them together"',
            "#endif"]


def _plain(f) -> str:
    """A field's C element type as generated code spells it inside functions: an
    enum as its uint16_t (the enum's typedef name may be a parameter's or a
    local's: `(color :Color, other :Color)`, an enum named `T`)."""
    return "uint16_t" if f[2 if f[0] == "prim" else 3] == "enum" else f[5]


def _shadowless(f) -> str:
    """A field's C type as a client stub's parameter list spells it: a struct and a
    list of structs by their tag (`struct point *`), which no parameter name
    shadows, an enum as uint16_t. `put @0 (point :Point, other :Point)` gives
    `const struct point *point, const struct point *other`."""
    kind = f[0]
    if kind == "prim":
        return _plain(f)
    if kind == "struct":
        return f"struct {f[3]} *"
    if kind == "slist":
        return f"struct {f[3]}_list"
    if kind == "plist":
        return f[4]
    return {"text": "wsuper_text", "data": "wsuper_data", "cap": "wsuper_cap"}[kind]


def _default_bits(kind, default) -> int:
    import struct as _s
    if kind == "float32":
        return _s.unpack("<I", _s.pack("<f", default))[0]
    if kind == "float64":
        return _s.unpack("<Q", _s.pack("<d", default))[0]
    if kind == "bool":
        return int(bool(default))
    if kind == "enum":
        return int(default.raw if hasattr(default, "raw") else default)
    bits = _PRIM[kind][1]
    return int(default) & ((1 << bits) - 1)


def _bits(kind) -> int:
    return _PRIM[kind][1] if kind in _PRIM else 64


def _as_bits(kind, value) -> str:
    """A float's bit pattern (floats are stored, and XORed with defaults, as integers)."""
    return {"float32": f"wsuper_f32_bits({value})",
            "float64": f"wsuper_f64_bits({value})"}.get(kind, value)


def _from_bits(kind, raw, ctype) -> str:
    if kind == "float32":
        return f"wsuper_bits_f32({raw})"
    if kind == "float64":
        return f"wsuper_bits_f64({raw})"
    return f"({ctype}){raw}"


def _set_prim(kind, at, offset, value, default) -> str:
    bits = _PRIM[kind][1]
    if bits == 1:
        return f"wsuper_set_bool(b, {at}, {offset}, ({value}) ^ {default})"
    value = _as_bits(kind, value)
    x = f" ^ UINT{bits}_C({default:#x})" if default else ""
    return f"wsuper_set_u{bits}(b, {at}, {offset * bits // 8}, (uint{bits}_t)({value}){x})"


def _get_prim(kind, offset, default, ctype) -> str:
    bits = _PRIM[kind][1]
    if bits == 1:
        return f"wsuper_get_bool(r, s, {offset}) ^ {default}"
    x = f" ^ UINT{bits}_C({default:#x})" if default else ""
    return _from_bits(kind, f"(wsuper_get_u{bits}(r, s, {offset * bits // 8}){x})", ctype)


def _set_elem(elem, bits, value) -> str:
    if elem in ("text", "data"):
        return f"wsuper_set_{elem}(b, l + i, {value})"
    if elem == "interface":
        return f"wsuper_set_cap(b, l + i, {value})"
    if bits == 1:
        return f"wsuper_set_bool(b, l, i, {value})"
    return f"wsuper_set_u{bits}(b, l, i * {bits // 8}, (uint{bits}_t)({_as_bits(elem, value)}))"


def _get_elem(elem, ctype) -> str:
    if elem in ("text", "data"):
        return f"wsuper_get_{elem}(r, l + i)"
    if elem == "interface":
        return "wsuper_get_cap(r, l + i)"
    bits = _bits(elem)
    if bits == 1:
        return "(r->seg[(size_t)l * 8 + i / 8] >> (i % 8)) & 1"
    return _from_bits(elem, f"wsuper_elem_u{bits}(r, l, i)", ctype)


def header_name(schema_path: str) -> str:
    """The header a schema's bindings are written to: NAME.h for NAME.capnp."""
    return os.path.splitext(os.path.basename(schema_path))[0] + ".h"


#: The C library's headers (C17, wasi-libc's and clang's own): `wsuper build`
#: passes the include directory with -I, searched before the C library's even for
#: `#include <...>`, so bindings named like one of them hid it from the plugin
#: and from wsuper.h (string.capnp: strlen and memcpy built undeclared).  Names
#: beginning with "__" are the library's own (wasi-libc's string.h includes
#: __header_string.h): refused whatever follows.
_C_HEADERS = frozenset(f"{h}.h" for h in """assert complex ctype errno fenv float inttypes
iso646 limits locale math setjmp signal stdalign stdarg stdatomic stdbool stddef stdint
stdio stdlib stdnoreturn string tgmath threads time uchar wchar wctype alloca ar byteswap
cpio crypt dirent dlfcn endian err fcntl features fmtmsg fnmatch ftw fts getopt glob iconv
ifaddrs langinfo libgen malloc memory monetary mqueue netdb nl_types poll pthread regex
sched search semaphore spawn stdc-predef stdio_ext strings stropts syscall sysexits syslog
tar termios ucontext unistd utime values varargs unwind wasm_simd128 wordexp
stdbit stdckdint""".split())


def _header_key(name: str) -> str:
    """A header's name as a file system that ignores case sees it (macOS's and
    Windows', FAT, a casefolded ext4 directory): there String.h is string.h, and
    Wsuper.h is the SDK's wsuper.h, which bindgen writes over it."""
    return name.casefold()


def _header_problem(schema_path: str) -> str | None:
    """Why a schema's bindings cannot be written to its header name, or None."""
    name = header_name(schema_path)
    key = _header_key(name)
    sdk = os.path.basename(SDK_HEADER)
    if key == _header_key(sdk):
        return (f"{schema_path}: its bindings would be {name}, the C SDK's header"
                f"{'' if name == sdk else f' ({sdk}, wherever case is ignored)'}, which "
                "bindgen writes beside them; rename the schema file")
    hidden = next((h for h in _C_HEADERS if _header_key(h) == key), None) \
        or (name if name.startswith("__") else None)
    if hidden:
        return (f"{schema_path}: its bindings would be {name}, a header of the C library"
                f"{'' if name == hidden else f' ({hidden}, wherever case is ignored)'}, "
                f"which they would hide from the plugin and from wsuper.h "
                f"(`#include <{hidden}>` finds the include directory first); rename the "
                "schema file")
    return None


def generate_all(schema_paths, out_dir: str) -> list[str]:
    """generate() each schema into out_dir, having refused first two schemas that
    would write one header (a/kv.capnp and b/kv.capnp: the second replaced the
    first) and a schema whose header would be the SDK's wsuper.h."""
    by_header: dict[str, str] = {}
    for path in schema_paths:
        name = header_name(path)
        problem = _header_problem(path)
        if problem:
            raise BindgenError(problem)
        # by the name as a file system that ignores case sees it: a/Kv.capnp and
        # b/kv.capnp wrote one file there, the second replacing the first
        other = by_header.setdefault(_header_key(name), path)
        if os.path.realpath(other) != os.path.realpath(path):
            raise BindgenError(f"{other} and {path} would both be bound to {name} in "
                               f"{out_dir}" + ("" if header_name(other) == name else
                                               f" ({header_name(other)} is {name} wherever "
                                               "case is ignored)")
                               + "; rename one of the files or bind them apart")
    # every schema read, bound and its header checked before any is written: a
    # schema refused after another (`bindgen a.capnp bad.capnp`) left a.h written
    ready = [_prepare(path, out_dir) for path in by_header.values()]
    written: list[str] = []
    for header in ready:
        written += [p for p in _write_headers(*header) if p not in written]
    return written


def generate(schema_path: str, out_dir: str) -> list[str]:
    """Write NAME.h (and wsuper.h) into out_dir; returns the paths written."""
    return _write_headers(*_prepare(schema_path, out_dir))


def _prepare(schema_path: str, out_dir: str) -> tuple[str, str, bytes]:
    """NAME.h's path in out_dir (made if missing), wsuper.h's, and NAME.h's text;
    BindgenError if the schema cannot be bound or either file there is not ours."""
    problem = _header_problem(schema_path)
    if problem:
        raise BindgenError(problem)
    gen = Generator(schema_path)
    if not gen.interfaces and not gen.order and not gen.enums:
        raise BindgenError(f"{schema_path}: no interfaces, structs or enums to bind")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        # as `build` says it (toolchain.build): "[Errno 17] File exists: 'kv.capnp'"
        # named neither what was being made nor what for
        raise BindgenError(f"cannot make the include directory {out_dir} for the bindings "
                           f"of {schema_path}: {e.strerror}") from None
    target = os.path.join(out_dir, header_name(schema_path))
    runtime = os.path.join(out_dir, "wsuper.h")
    _ours(target, _GENERATED)
    _ours(runtime, _SDK_FIRST_LINE)
    return target, runtime, gen.header().encode()


def _write_headers(target: str, runtime: str, text: bytes) -> list[str]:
    with open(SDK_HEADER, "rb") as f:
        sdk = f.read()
    for path, data in ((target, text), (runtime, sdk)):
        try:
            _write_whole(path, data)
        except OSError as e:
            # a directory no file can be made in (-o /proc): it said "[Errno 2] No
            # such file or directory: '/proc/.calc.h.wy8ypfmi.tmp'", a name of ours
            raise BindgenError(f"cannot write {path}: {e.strerror or e}") from None
    return [target, runtime]


def _write_whole(path: str, data: bytes) -> None:
    """`path` gets `data` whole or keeps what it had: written under another name
    beside it, then renamed.  Opened (emptied) first and then written, a header
    that Ctrl-C (while a large schema's text was made) or a full disk cut short
    was left empty, and _ours refused it at every later bindgen and build."""
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_GENERATED = "/* Generated by `wsuper bindgen`"
with open(SDK_HEADER) as _f:
    _SDK_FIRST_LINE = _f.readline().rstrip("\n")


def _ours(path: str, first_line: str) -> None:
    """Refuse to replace a file bindgen did not write (its first line says whose
    it is): `--include-dir` (or the default include/ beside the output) may
    hold the plugin's own kv.h or wsuper.h, and a directory there is no header."""
    # Looked at without following a link or waiting: opened as it was, a FIFO
    # planted as include/kv.h (a plugin's source tree may ship one) was waited on
    # for ever, and `bindgen` or `build` never ended.
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:
        st = None
    mine = False
    if st is not None and stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            fd = -1
        if fd >= 0:
            with open(fd, encoding="utf-8", errors="replace") as f:
                try:
                    mine = stat.S_ISREG(os.fstat(fd).st_mode) and \
                        f.readline(len(first_line) + 1).startswith(first_line)
                except OSError:
                    mine = False
    if not mine:
        raise BindgenError(f"{path} exists and was not written by wsuper bindgen: "
                           "not replacing it (move it, or bind into another directory)")
