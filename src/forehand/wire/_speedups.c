/* forehand.wire._speedups: the hot frames of forehand/1 (REQUEST, RESPONSE, HANDOFF) in C.
 *
 * This module is an optional accelerator of the pure-Python codec in forehand.wire._codec and
 * _hot_codec: its encode_frame, decode_frame and decode_body take the same arguments, return
 * equal frames and byte-identical encodings, and reject the same inputs with the same
 * RemoteProtocolError codes. forehand.wire._implementation decides which codec is used.
 *
 * The division of work keeps one reference implementation:
 * - Decoding REQUEST, RESPONSE and HANDOFF is done here, with every bound of docs/PROTOCOL.md
 *   checked before anything is allocated for a field. So is CLUSTER_MESSAGE (a varint kind and
 *   opaque bytes) when FrameDecoder's batches meet it: servers ship their logs in it. Endpoints are framed here but parsed by
 *   the Python cache in _primitives (a connection sees the same few servers again and again).
 * - Encoding the three hot frames and CLUSTER_MESSAGE is done here for well-typed frames.
 *   Anything unusual (a field of an unexpected type, a value out of range, an encoding error)
 *   is handed to the Python encoder, so that LocalProtocolError and its message come from one
 *   place.
 * - Every other frame type, and arguments of unexpected types, go to the Python codec.
 *
 * The module uses single-phase initialisation with process-wide state: it holds references to
 * classes of forehand.wire, which exist once per interpreter anyway.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define VARINT_MAX 0x3FFFFFFFFFFFFFFFULL
#define SESSION_ID_BYTES 16
/* The fixed heads: session_id, two u64, then the frame's own fields (docs/PROTOCOL.md). */
#define REQUEST_HEAD_BYTES 34  /* ... part length (u8), op length (u8) */
/* The high bit of REQUEST's op length byte: a u32 wait budget (ms) follows the head. */
#define WAIT_BUDGET_FLAG 0x80
#define WAIT_BUDGET_BYTES 4
#define RESPONSE_HEAD_BYTES 33 /* ... status (u8) */
#define HANDOFF_HEAD_BYTES 40  /* ... reason (u16), flags (u16), deadline_ms (u32) */
#define FRAME_HEADER_BYTES_MAX 16
/* Every item of a list on the wire takes at least two bytes; a count above half the bytes
 * left cannot be honest, and checking it first keeps allocations bounded by the frame size. */
#define LIST_ITEM_BYTES_MIN 2
/* Part lists up to this long are checked for repeats pairwise, longer ones with a set. */
#define PAIRWISE_NAMES_MAX 16
#define BOUNDS_CACHE_SIZE 4
#define FIELDS_MAX 12
#define U16_MAX 0xFFFF
#define U32_MAX 0xFFFFFFFFULL
#define COMMON_FLAGS_COUNT 8
#define ALLOWED_CACHE_SIZE 4
#define ONE_BYTE_TYPES 0x40

/* ---------------------------------------------------------------------------------------- */
/* Process-wide state, filled by the module's init from forehand.wire's Python modules.      */

typedef struct {
    PyTypeObject *type;
    PyObject *kwnames;                /* the Struct's own field-name objects, in our order */
    Py_ssize_t offsets[FIELDS_MAX];   /* where each field's slot lives in an instance */
    Py_ssize_t count;
    int direct;                       /* instances may be filled in place (see build_frame) */
} FrameClass;

enum {
    REQ_REQUEST_ID, REQ_SESSION_ID, REQ_PART, REQ_OP, REQ_MAP_VERSION, REQ_PAYLOAD,
    REQ_WAIT_BUDGET_MS, REQ_N
};
static const char *const REQUEST_FIELDS[] = {
    "request_id", "session_id", "part", "op", "map_version", "payload", "wait_budget_ms", NULL};

enum { RSP_REQUEST_ID, RSP_SESSION_ID, RSP_STATUS, RSP_MAP_VERSION, RSP_PAYLOAD, RSP_N };
static const char *const RESPONSE_FIELDS[] = {
    "request_id", "session_id", "status", "map_version", "payload", NULL};

enum {
    HND_SEQUENCE, HND_SESSION_ID, HND_PARTS, HND_MAP_VERSION, HND_REASON, HND_FLAGS,
    HND_DEADLINE_MS, HND_CURRENT, HND_TARGETS, HND_TOKEN, HND_EXTENSIONS, HND_N
};
static const char *const HANDOFF_FIELDS[] = {
    "sequence", "session_id", "parts", "map_version", "reason", "flags", "deadline_ms",
    "current", "targets", "token", "extensions", NULL};

enum { CLU_KIND, CLU_BODY, CLU_N };
static const char *const CLUSTER_FIELDS[] = {"kind", "body", NULL};

static FrameClass request_class, response_class, handoff_class, cluster_class;
static uint64_t frame_type_request, frame_type_response, frame_type_handoff, frame_type_error;
/* CLUSTER_MESSAGE (0x40..0x7f): the first type with a two-byte varint, which the batch decoder
 * takes too since servers exchange most of their log shipping in it. */
static uint64_t frame_type_cluster;
static unsigned char cluster_head[2];       /* its two header bytes, shortest encoding */

static PyObject *remote_protocol_error;    /* forehand.errors.RemoteProtocolError */
static PyObject *code_frame_encoding_error; /* ErrorCode members */
static PyObject *code_frame_too_large;
static PyObject *kwnames_error_code;        /* ("error_code",) */
static PyObject *kwnames_config;            /* ("config",) */
static PyObject *default_config;
static PyObject *pure_encode_frame, *pure_decode_frame, *pure_decode_body, *pure_pop_frame;
static PyObject *pure_pop_frames, *pure_encode_frames;
static PyObject *encode_endpoint;           /* _primitives.encode_endpoint (lru-cached) */
static PyObject *parse_endpoint;            /* _primitives._parse_endpoint */
static PyObject *decoded_endpoints;         /* _primitives._decoded_endpoints */
static Py_ssize_t endpoint_cache_max;
static PyObject *struct_error;
static PyTypeObject *extension_type;        /* the Extension NamedTuple */
static PyObject *handoff_flag_type;
static PyObject *common_flags[COMMON_FLAGS_COUNT];
static PyObject **statuses;                 /* ResponseStatus by value, NULL when unknown */
static Py_ssize_t statuses_size;
static PyObject **reasons;                  /* ReasonCode by value, NULL when unknown */
static Py_ssize_t reasons_size;
static PyObject *reason_unspecified;

/* The bounds of one WireConfig, as C integers; values too large for C are clamped. Each call
 * works on its own copy, so that nothing it runs can change them under it. */
typedef struct {
    long long frame_bytes_max, server_id_bytes_max, part_name_bytes_max, op_name_bytes_max;
    long long token_bytes_max, parts_max, targets_max, extensions_max, extension_bytes_max;
} Bounds;

typedef struct {
    PyObject *config;                 /* strong reference: the cache key */
    Bounds bounds;
} CachedBounds;

static CachedBounds bounds_cache[BOUNDS_CACHE_SIZE];
static int bounds_cache_next;

/* The one-byte frame types of a frozenset of allowed types, as a bit mask, and whether it holds
 * CLUSTER_MESSAGE. */
typedef struct {
    PyObject *types;                  /* strong reference: the cache key */
    uint64_t mask;
    int cluster;
} AllowedTypes;

static AllowedTypes allowed_cache[ALLOWED_CACHE_SIZE];
static int allowed_cache_next;

/* ---------------------------------------------------------------------------------------- */
/* Errors.                                                                                   */

/* Raise RemoteProtocolError(message, error_code=code); steals `message`. */
static void
raise_remote(PyObject *code, PyObject *message)
{
    if (message == NULL) {
        return;
    }
    PyObject *args[2] = {message, code};
    PyObject *error = PyObject_Vectorcall(remote_protocol_error, args, 1, kwnames_error_code);
    Py_DECREF(message);
    if (error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
    }
}

/* A frame body that breaks the encoding rules: FRAME_ENCODING_ERROR. */
static void *
malformed(const char *format, ...)
{
    va_list vargs;
    va_start(vargs, format);
    PyObject *message = PyUnicode_FromFormatV(format, vargs);
    va_end(vargs);
    raise_remote(code_frame_encoding_error, message);
    return NULL;
}

static void *
truncated(const char *frame_name)
{
    return malformed("malformed %s frame: body ends inside a field", frame_name);
}

/* Turn the errors the Python helpers may raise on bad input into FRAME_ENCODING_ERROR, as
 * decode_body does for the pure codec; RemoteProtocolError and anything else pass through. */
static void
wrap_helper_error(const char *frame_name)
{
    if (!(PyErr_ExceptionMatches(PyExc_IndexError) || PyErr_ExceptionMatches(PyExc_ValueError) ||
          PyErr_ExceptionMatches(struct_error))) {
        return;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    malformed("malformed %s frame: %S", frame_name, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

/* ---------------------------------------------------------------------------------------- */
/* Bounds of a WireConfig, cached by identity (WireConfig is frozen).                        */

static const char *const BOUND_NAMES[] = {
    "frame_bytes_max", "server_id_bytes_max", "part_name_bytes_max", "op_name_bytes_max",
    "token_bytes_max", "parts_max", "targets_max", "extensions_max", "extension_bytes_max",
    NULL};

/* Read the bounds of `config` into `bounds`; 0 when they are not all ints (no error set). */
static int
load_bounds(PyObject *config, Bounds *bounds)
{
    long long *targets[] = {
        &bounds->frame_bytes_max, &bounds->server_id_bytes_max, &bounds->part_name_bytes_max,
        &bounds->op_name_bytes_max, &bounds->token_bytes_max, &bounds->parts_max,
        &bounds->targets_max, &bounds->extensions_max, &bounds->extension_bytes_max};
    for (int i = 0; BOUND_NAMES[i] != NULL; i++) {
        PyObject *value = PyObject_GetAttrString(config, BOUND_NAMES[i]);
        if (value == NULL || !PyLong_Check(value)) {
            Py_XDECREF(value);
            PyErr_Clear();
            return 0;
        }
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        *targets[i] = overflow > 0 ? LLONG_MAX : (overflow < 0 ? LLONG_MIN : number);
        Py_DECREF(value);
    }
    return 1;
}

/* Copy the bounds of `config` into `bounds`; 0 when the config is unusable here (no error set).
 * Must not be called with an exception pending: reading a new config runs Python code. */
static int
get_bounds(PyObject *config, Bounds *bounds)
{
    for (int i = 0; i < BOUNDS_CACHE_SIZE; i++) {
        if (bounds_cache[i].config == config) {
            *bounds = bounds_cache[i].bounds;
            return 1;
        }
    }
    if (!load_bounds(config, bounds)) {
        return 0;
    }
    CachedBounds *slot = &bounds_cache[bounds_cache_next];
    bounds_cache_next = (bounds_cache_next + 1) % BOUNDS_CACHE_SIZE;
    Py_INCREF(config);
    Py_XSETREF(slot->config, config);
    slot->bounds = *bounds;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Fixed-width and variable-length integers.                                                 */

static inline uint64_t
read_u64(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

static inline void
write_u64(unsigned char *p, uint64_t value)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)value;
        value >>= 8;
    }
}

static inline uint32_t
read_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
write_u32(unsigned char *p, uint32_t value)
{
    for (int i = 3; i >= 0; i--) {
        p[i] = (unsigned char)value;
        value >>= 8;
    }
}

static inline Py_ssize_t
varint_size(uint64_t value)
{
    return value < 0x40 ? 1 : value < 0x4000 ? 2 : value < 0x40000000 ? 4 : 8;
}

/* The shortest RFC 9000 s.16 encoding of `value` (below 2**62); returns the end. */
static inline unsigned char *
write_varint(unsigned char *p, uint64_t value)
{
    Py_ssize_t size = varint_size(value);
    static const uint64_t flags[9] = {0, 0, 0x4000, 0, 0x80000000ULL, 0, 0, 0,
                                      0xC000000000000000ULL};
    value |= flags[size];
    for (Py_ssize_t i = size - 1; i >= 0; i--) {
        p[i] = (unsigned char)value;
        value >>= 8;
    }
    return p + size;
}

/* Read a varint at `offset`; the offset after it, or -1 when the data ends first (no error
 * set). Non-shortest encodings are accepted, as RFC 9000 allows. */
static inline Py_ssize_t
read_varint(const unsigned char *data, Py_ssize_t size, Py_ssize_t offset, uint64_t *value)
{
    if (offset >= size) {
        return -1;
    }
    Py_ssize_t length = (Py_ssize_t)1 << (data[offset] >> 6);
    if (length > size - offset) {
        return -1;
    }
    uint64_t result = data[offset] & 0x3F;
    for (Py_ssize_t i = 1; i < length; i++) {
        result = (result << 8) | data[offset + i];
    }
    *value = result;
    return offset + length;
}

/* Whether `object` is an exact int in 0..maximum; its value in *value. */
static inline int
exact_uint(PyObject *object, unsigned long long maximum, unsigned long long *value)
{
    if (!PyLong_CheckExact(object)) {
        return 0;
    }
    unsigned long long number = PyLong_AsUnsignedLongLong(object);
    if (number == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *value = number;
    return number <= maximum;
}

/* Like exact_uint, but for IntEnum and IntFlag members too (struct.pack reads their value). */
static inline int
any_uint(PyObject *object, unsigned long long maximum, unsigned long long *value)
{
    if (!PyLong_Check(object)) {
        return 0;
    }
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(object, &overflow);
    if (overflow != 0 || number < 0 || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *value = (unsigned long long)number;
    return (unsigned long long)number <= maximum;
}

/* ---------------------------------------------------------------------------------------- */
/* Frame objects: read fields straight from their slots, build them with one vectorcall.     */

/* The field `index` of a frame whose exact class is `cls`; borrowed, NULL if unset. */
static inline PyObject *
get_field(const FrameClass *cls, PyObject *frame, int index)
{
    return *(PyObject **)((char *)frame + cls->offsets[index]);
}

/* Build a frame from `values` (in the class's field order); steals every value. */
static PyObject *
build_frame(const FrameClass *cls, PyObject **values)
{
    PyObject *frame = NULL;
    for (Py_ssize_t i = 0; i < cls->count; i++) {
        if (values[i] == NULL) {
            goto done;
        }
    }
    if (cls->direct) {
        /* What the Struct's __init__ does for these classes (no defaults taken, no
         * __post_init__, no GC): allocate, then hand each value to its slot. */
        frame = cls->type->tp_alloc(cls->type, 0);
        if (frame == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < cls->count; i++) {
            *(PyObject **)((char *)frame + cls->offsets[i]) = values[i];
        }
        return frame;
    }
    frame = PyObject_Vectorcall((PyObject *)cls->type, values, 0, cls->kwnames);
done:
    for (Py_ssize_t i = 0; i < cls->count; i++) {
        Py_XDECREF(values[i]);
    }
    return frame;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding. A decoder reads the body data[start:] of a bytes object.                        */

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
    Py_ssize_t offset;
    const char *frame_name;
    const Bounds *bounds;
} Reader;

/* A varint count of list items, checked against 0..maximum (or 1..maximum). */
static int
pull_count(Reader *reader, long long maximum, int allow_empty, const char *what, uint64_t *count)
{
    Py_ssize_t end = read_varint(reader->data, reader->size, reader->offset, count);
    if (end < 0) {
        truncated(reader->frame_name);
        return -1;
    }
    reader->offset = end;
    if ((!allow_empty && *count == 0) || (maximum < 0 || *count > (uint64_t)maximum)) {
        malformed("list of %llu %s is outside %d..%lld", (unsigned long long)*count, what,
                  allow_empty ? 0 : 1, maximum);
        return -1;
    }
    if (*count > (uint64_t)((reader->size - reader->offset) / LIST_ITEM_BYTES_MIN)) {
        truncated(reader->frame_name);
        return -1;
    }
    return 0;
}

/* Varint length, at most `maximum`, then that many bytes. */
static PyObject *
pull_bytes(Reader *reader, long long maximum)
{
    uint64_t size;
    Py_ssize_t start = read_varint(reader->data, reader->size, reader->offset, &size);
    if (start < 0) {
        return truncated(reader->frame_name);
    }
    if (maximum < 0 || size > (uint64_t)maximum) {
        return malformed("field of %llu bytes exceeds its bound of %lld",
                         (unsigned long long)size, maximum);
    }
    if (size > (uint64_t)(reader->size - start)) {
        return truncated(reader->frame_name);
    }
    reader->offset = start + (Py_ssize_t)size;
    return PyBytes_FromStringAndSize((const char *)reader->data + start, (Py_ssize_t)size);
}

/* Call _primitives._parse_endpoint on a framed endpoint and cache the result. */
static PyObject *
parse_and_cache_endpoint(PyObject *encoded, const char *frame_name)
{
    PyObject *endpoint = PyObject_CallOneArg(parse_endpoint, encoded);
    if (endpoint == NULL) {
        wrap_helper_error(frame_name);
        return NULL;
    }
    if (PyDict_GET_SIZE(decoded_endpoints) >= endpoint_cache_max) {
        PyDict_Clear(decoded_endpoints);
    }
    if (PyDict_SetItem(decoded_endpoints, encoded, endpoint) < 0) {
        Py_DECREF(endpoint);
        return NULL;
    }
    return endpoint;
}

/* One endpoint: framed here (sizes checked), parsed through the shared Python cache. */
static PyObject *
pull_endpoint(Reader *reader)
{
    const unsigned char *data = reader->data;
    Py_ssize_t size = reader->size, start = reader->offset;
    if (start >= size) {
        return truncated(reader->frame_name);
    }
    long long server_id_size = data[start];
    long long server_id_max = reader->bounds->server_id_bytes_max;
    if (!(0 < server_id_size && server_id_size <= server_id_max)) {
        return malformed("server id of %lld bytes is outside 1..%lld", server_id_size,
                         server_id_max);
    }
    Py_ssize_t address_at = start + 1 + (Py_ssize_t)server_id_size;
    if (address_at >= size) {
        return truncated(reader->frame_name);
    }
    Py_ssize_t address_size;
    switch (data[address_at]) {
    case 0x01: address_size = 4; break;
    case 0x02: address_size = 16; break;
    case 0x03:
        if (address_at + 1 >= size) {
            return truncated(reader->frame_name);
        }
        address_size = 1 + data[address_at + 1];
        break;
    default:
        return malformed("unknown endpoint address type %d", (int)data[address_at]);
    }
    Py_ssize_t end = address_at + 1 + address_size + 2;
    if (end > size) {
        return truncated(reader->frame_name);
    }
    PyObject *encoded = PyBytes_FromStringAndSize((const char *)data + start, end - start);
    if (encoded == NULL) {
        return NULL;
    }
    PyObject *endpoint = PyDict_GetItemWithError(decoded_endpoints, encoded);
    if (endpoint != NULL) {
        Py_INCREF(endpoint);
    } else if (!PyErr_Occurred()) {
        endpoint = parse_and_cache_endpoint(encoded, reader->frame_name);
    }
    Py_DECREF(encoded);
    if (endpoint != NULL) {
        reader->offset = end;
    }
    return endpoint;
}

/* Whether two name spans of the list starting at `starts` repeat; pairwise or with a set. */
static int
names_repeat(Reader *reader, PyObject *names, const Py_ssize_t *starts, Py_ssize_t count)
{
    if (count <= PAIRWISE_NAMES_MAX) {
        for (Py_ssize_t i = 0; i < count; i++) {
            const unsigned char *a = reader->data + starts[i];
            for (Py_ssize_t j = i + 1; j < count; j++) {
                const unsigned char *b = reader->data + starts[j];
                if (a[0] == b[0] && memcmp(a + 1, b + 1, a[0]) == 0) {
                    return 1;
                }
            }
        }
        return 0;
    }
    PyObject *unique = PySet_New(names);
    if (unique == NULL) {
        return -1;
    }
    int repeated = PySet_GET_SIZE(unique) != count;
    Py_DECREF(unique);
    return repeated;
}

/* A non-empty list of distinct part names: varint count, then u8-prefixed UTF-8 names. */
static PyObject *
pull_names(Reader *reader)
{
    uint64_t count;
    const Bounds *bounds = reader->bounds;
    if (pull_count(reader, bounds->parts_max, 0, "part names", &count) < 0) {
        return NULL;
    }
    Py_ssize_t small_starts[PAIRWISE_NAMES_MAX];
    Py_ssize_t *starts = small_starts;
    PyObject *names = PyTuple_New((Py_ssize_t)count);
    if (names == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        Py_ssize_t start = reader->offset;
        long long size = reader->data[start]; /* pull_count left at least two bytes per name */
        Py_ssize_t end = start + 1 + (Py_ssize_t)size;
        if (!(0 < size && size <= bounds->part_name_bytes_max) || end > reader->size) {
            Py_DECREF(names);
            return malformed("part name of %lld bytes is outside 1..%lld", size,
                             bounds->part_name_bytes_max);
        }
        PyObject *name = PyUnicode_DecodeUTF8(
            (const char *)reader->data + start + 1, (Py_ssize_t)size, NULL);
        if (name == NULL) {
            Py_DECREF(names);
            wrap_helper_error(reader->frame_name);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, name);
        if (i < PAIRWISE_NAMES_MAX) {
            starts[i] = start;
        }
        reader->offset = end;
        if (i + 1 < (Py_ssize_t)count && reader->offset >= reader->size) {
            Py_DECREF(names);
            return truncated(reader->frame_name);
        }
    }
    int repeated = names_repeat(reader, names, starts, (Py_ssize_t)count);
    if (repeated != 0) {
        Py_DECREF(names);
        return repeated < 0 ? NULL : malformed("list of part names repeats a name");
    }
    return names;
}

/* HANDOFF extensions: varint count, then (type varint, value bytes) pairs. */
static PyObject *
pull_extensions(Reader *reader)
{
    uint64_t count;
    const Bounds *bounds = reader->bounds;
    if (pull_count(reader, bounds->extensions_max, 1, "HANDOFF extensions", &count) < 0) {
        return NULL;
    }
    PyObject *extensions = PyTuple_New((Py_ssize_t)count);
    if (extensions == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        uint64_t kind;
        Py_ssize_t end = read_varint(reader->data, reader->size, reader->offset, &kind);
        if (end < 0) {
            Py_DECREF(extensions);
            return truncated(reader->frame_name);
        }
        reader->offset = end;
        PyObject *value = pull_bytes(reader, bounds->extension_bytes_max);
        PyObject *type_object = value == NULL ? NULL : PyLong_FromUnsignedLongLong(kind);
        /* tuple.__new__(Extension, (type, value)), as the pure codec builds it. */
        PyObject *extension = type_object == NULL ? NULL
                                                  : extension_type->tp_alloc(extension_type, 2);
        if (extension == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(type_object);
            Py_DECREF(extensions);
            return NULL;
        }
        PyTuple_SET_ITEM(extension, 0, type_object);
        PyTuple_SET_ITEM(extension, 1, value);
        PyTuple_SET_ITEM(extensions, i, extension);
    }
    return extensions;
}

/* Recently decoded ASCII part and op names, so that the few names a connection repeats are
 * not decoded and allocated again for every REQUEST. Strings are immutable: sharing is safe. */
#define NAME_CACHE_SIZE 64
static PyObject *name_cache[NAME_CACHE_SIZE];

static PyObject *
decode_name(const unsigned char *data, Py_ssize_t size)
{
    uint32_t hash = 2166136261u;
    for (Py_ssize_t i = 0; i < size; i++) {
        hash = (hash ^ data[i]) * 16777619u;
    }
    PyObject **slot = &name_cache[hash % NAME_CACHE_SIZE];
    PyObject *cached = *slot;
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == size &&
        memcmp(PyUnicode_DATA(cached), data, size) == 0) {
        return Py_NewRef(cached);
    }
    PyObject *name = PyUnicode_DecodeUTF8((const char *)data, size, NULL);
    if (name != NULL && PyUnicode_IS_COMPACT_ASCII(name)) {
        Py_XSETREF(*slot, Py_NewRef(name));
    }
    return name;
}

static PyObject *
decode_request(const unsigned char *bytes, Py_ssize_t size, Py_ssize_t start,
               const Bounds *bounds)
{
    if (size - start < REQUEST_HEAD_BYTES) {
        return truncated("REQUEST");
    }
    const unsigned char *head = bytes + start;
    uint64_t request_id = read_u64(head + 16), map_version = read_u64(head + 24);
    if ((request_id | map_version) > VARINT_MAX) {
        return malformed("REQUEST request_id or map_version exceeds 2**62-1");
    }
    long long part_size = head[32], op_size = head[33] & ~WAIT_BUDGET_FLAG;
    int budgeted = (head[33] & WAIT_BUDGET_FLAG) != 0;
    if (!(0 < part_size && part_size <= bounds->part_name_bytes_max && 0 < op_size &&
          op_size <= bounds->op_name_bytes_max)) {
        return malformed("REQUEST part (%lld) or op (%lld) length out of bounds", part_size,
                         op_size);
    }
    Py_ssize_t part_start = start + REQUEST_HEAD_BYTES;
    if (budgeted) {
        part_start += WAIT_BUDGET_BYTES;
        if (part_start > size) {
            return malformed("REQUEST body ends inside its wait budget");
        }
    }
    Py_ssize_t op_start = part_start + (Py_ssize_t)part_size;
    Py_ssize_t payload_start = op_start + (Py_ssize_t)op_size;
    if (payload_start > size) {
        return malformed("REQUEST body ends inside its op name");
    }
    PyObject *values[REQ_N];
    values[REQ_PART] = decode_name(bytes + part_start, part_size);
    values[REQ_OP] = values[REQ_PART] == NULL ? NULL : decode_name(bytes + op_start, op_size);
    if (values[REQ_OP] == NULL) {
        Py_XDECREF(values[REQ_PART]);
        wrap_helper_error("REQUEST");
        return NULL;
    }
    values[REQ_REQUEST_ID] = PyLong_FromUnsignedLongLong(request_id);
    values[REQ_SESSION_ID] = PyBytes_FromStringAndSize((const char *)head, SESSION_ID_BYTES);
    values[REQ_MAP_VERSION] = PyLong_FromUnsignedLongLong(map_version);
    values[REQ_PAYLOAD] = PyBytes_FromStringAndSize(
        (const char *)bytes + payload_start, size - payload_start);
    values[REQ_WAIT_BUDGET_MS] = budgeted
                                     ? PyLong_FromUnsignedLong(read_u32(head + REQUEST_HEAD_BYTES))
                                     : Py_NewRef(Py_None);
    return build_frame(&request_class, values);
}

static PyObject *
decode_response(const unsigned char *bytes, Py_ssize_t size, Py_ssize_t start)
{
    if (size - start < RESPONSE_HEAD_BYTES) {
        return truncated("RESPONSE");
    }
    const unsigned char *head = bytes + start;
    uint64_t request_id = read_u64(head + 16), map_version = read_u64(head + 24);
    if ((request_id | map_version) > VARINT_MAX) {
        return malformed("RESPONSE request_id or map_version exceeds 2**62-1");
    }
    unsigned char status_value = head[32];
    PyObject *status = status_value < statuses_size ? statuses[status_value] : NULL;
    if (status == NULL) {
        return malformed("unknown RESPONSE status %d", (int)status_value);
    }
    PyObject *values[RSP_N];
    Py_INCREF(status);
    values[RSP_STATUS] = status;
    values[RSP_REQUEST_ID] = PyLong_FromUnsignedLongLong(request_id);
    values[RSP_SESSION_ID] = PyBytes_FromStringAndSize((const char *)head, SESSION_ID_BYTES);
    values[RSP_MAP_VERSION] = PyLong_FromUnsignedLongLong(map_version);
    values[RSP_PAYLOAD] = PyBytes_FromStringAndSize(
        (const char *)head + RESPONSE_HEAD_BYTES, size - start - RESPONSE_HEAD_BYTES);
    return build_frame(&response_class, values);
}

/* The HANDOFF targets: a count of 1..targets_max, then endpoints. */
static PyObject *
pull_targets(Reader *reader)
{
    uint64_t count;
    if (pull_count(reader, reader->bounds->targets_max, 0, "HANDOFF targets", &count) < 0) {
        return NULL;
    }
    PyObject *targets = PyTuple_New((Py_ssize_t)count);
    for (Py_ssize_t i = 0; targets != NULL && i < (Py_ssize_t)count; i++) {
        PyObject *target = pull_endpoint(reader);
        if (target == NULL) {
            Py_CLEAR(targets);
            break;
        }
        PyTuple_SET_ITEM(targets, i, target);
    }
    return targets;
}

/* Reason codes this version does not know mean UNSPECIFIED; unknown flag bits are kept. */
static PyObject *
handoff_reason_and_flags(const unsigned char *head, PyObject **flags)
{
    unsigned int reason_value = ((unsigned int)head[32] << 8) | head[33];
    unsigned int flags_value = ((unsigned int)head[34] << 8) | head[35];
    if (flags_value < COMMON_FLAGS_COUNT) {
        *flags = common_flags[flags_value];
        Py_INCREF(*flags);
    } else {
        PyObject *number = PyLong_FromUnsignedLong(flags_value);
        *flags = number == NULL ? NULL : PyObject_CallOneArg(handoff_flag_type, number);
        Py_XDECREF(number);
    }
    PyObject *reason = reason_value < reasons_size ? reasons[reason_value] : NULL;
    reason = reason == NULL ? reason_unspecified : reason;
    Py_INCREF(reason);
    return reason;
}

static PyObject *
decode_handoff(const unsigned char *data, Py_ssize_t size, Py_ssize_t start, const Bounds *bounds)
{
    Reader reader = {data, size, start + HANDOFF_HEAD_BYTES, "HANDOFF", bounds};
    if (reader.size - start < HANDOFF_HEAD_BYTES) {
        return truncated("HANDOFF");
    }
    const unsigned char *head = reader.data + start;
    uint64_t sequence = read_u64(head + 16), map_version = read_u64(head + 24);
    if ((sequence | map_version) > VARINT_MAX) {
        return malformed("HANDOFF sequence or map_version exceeds 2**62-1");
    }
    PyObject *values[HND_N] = {NULL};
    values[HND_CURRENT] = pull_endpoint(&reader);
    values[HND_TARGETS] = values[HND_CURRENT] ? pull_targets(&reader) : NULL;
    values[HND_TOKEN] = values[HND_TARGETS] ? pull_bytes(&reader, bounds->token_bytes_max) : NULL;
    values[HND_PARTS] = values[HND_TOKEN] ? pull_names(&reader) : NULL;
    values[HND_EXTENSIONS] = values[HND_PARTS] ? pull_extensions(&reader) : NULL;
    if (values[HND_EXTENSIONS] == NULL || reader.offset != reader.size) {
        if (values[HND_EXTENSIONS] != NULL) {
            malformed("HANDOFF body has trailing bytes");
        }
        for (int i = 0; i < HND_N; i++) {
            Py_XDECREF(values[i]);
        }
        return NULL;
    }
    values[HND_REASON] = handoff_reason_and_flags(head, &values[HND_FLAGS]);
    values[HND_SEQUENCE] = PyLong_FromUnsignedLongLong(sequence);
    values[HND_SESSION_ID] = PyBytes_FromStringAndSize((const char *)head, SESSION_ID_BYTES);
    values[HND_MAP_VERSION] = PyLong_FromUnsignedLongLong(map_version);
    values[HND_DEADLINE_MS] = PyLong_FromUnsignedLong(
        ((unsigned long)head[36] << 24) | ((unsigned long)head[37] << 16) |
        ((unsigned long)head[38] << 8) | head[39]);
    return build_frame(&handoff_class, values);
}

static PyObject *pure_body(uint64_t frame_type, PyObject *data, Py_ssize_t start,
                           PyObject *config);

/* Whether a frame type is one of the three decoded here. */
static inline int
is_hot(uint64_t frame_type)
{
    return frame_type == frame_type_request || frame_type == frame_type_response ||
           frame_type == frame_type_handoff;
}

/* Decode the body data[start:size] of a CLUSTER_MESSAGE: a varint kind, then opaque bytes. A
 * body that ends inside the kind goes to the pure decoder, which raises its error. */
static PyObject *
decode_cluster_body(const unsigned char *data, Py_ssize_t size, Py_ssize_t start,
                    PyObject *config)
{
    uint64_t kind;
    Py_ssize_t next = read_varint(data, size, start, &kind);
    if (next < 0) {
        PyObject *copy = PyBytes_FromStringAndSize((const char *)data, size);
        PyObject *frame = copy == NULL ? NULL : pure_body(frame_type_cluster, copy, start, config);
        Py_XDECREF(copy);
        return frame;
    }
    PyObject *values[CLU_N];
    values[CLU_KIND] = PyLong_FromUnsignedLongLong(kind);
    values[CLU_BODY] = PyBytes_FromStringAndSize((const char *)data + next, size - next);
    return build_frame(&cluster_class, values);
}

/* Decode the body data[start:size] of a hot frame type. */
static PyObject *
decode_hot_body(uint64_t frame_type, const unsigned char *data, Py_ssize_t size,
                Py_ssize_t start, const Bounds *bounds)
{
    if (frame_type == frame_type_request) {
        return decode_request(data, size, start, bounds);
    }
    if (frame_type == frame_type_response) {
        return decode_response(data, size, start);
    }
    return decode_handoff(data, size, start, bounds);
}

/* Decode the body data[start:] of a hot frame held in a bytes object. */
static PyObject *
decode_hot_bytes(uint64_t frame_type, PyObject *data, Py_ssize_t start, const Bounds *bounds)
{
    return decode_hot_body(frame_type, (const unsigned char *)PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data), start, bounds);
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding. An encoder returns the frame's bytes, or NULL: with an error set when something  */
/* failed, without one when the frame is not the well-typed common case. Either way the      */
/* caller hands the frame to the pure encoder, which then raises its own LocalProtocolError. */

/* Frame type and shortest length in front of a body of `body_size` bytes. */
static unsigned char *
write_header(unsigned char *p, uint64_t frame_type, Py_ssize_t body_size)
{
    p = write_varint(p, frame_type);
    return write_varint(p, (uint64_t)body_size);
}

static Py_ssize_t
header_size(uint64_t frame_type, Py_ssize_t body_size)
{
    return varint_size(frame_type) + varint_size((uint64_t)body_size);
}

/* The UTF-8 of an exact str of 1..maximum bytes, or NULL (no error set). */
static const char *
name_utf8(PyObject *name, long long maximum, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(name)) {
        return NULL;
    }
    const char *utf8 = PyUnicode_AsUTF8AndSize(name, size);
    if (utf8 == NULL) {
        PyErr_Clear(); /* lone surrogates: the pure encoder raises the error */
        return NULL;
    }
    return (0 < *size && *size <= maximum) ? utf8 : NULL;
}

static int
session_id_ok(PyObject *session_id)
{
    return PyBytes_CheckExact(session_id) && PyBytes_GET_SIZE(session_id) == SESSION_ID_BYTES;
}

static PyObject *
encode_request(PyObject *frame, const Bounds *bounds)
{
    const FrameClass *cls = &request_class;
    PyObject *session_id = get_field(cls, frame, REQ_SESSION_ID);
    PyObject *payload = get_field(cls, frame, REQ_PAYLOAD);
    PyObject *part = get_field(cls, frame, REQ_PART), *op = get_field(cls, frame, REQ_OP);
    PyObject *request_id = get_field(cls, frame, REQ_REQUEST_ID);
    PyObject *map_version = get_field(cls, frame, REQ_MAP_VERSION);
    PyObject *wait_budget = get_field(cls, frame, REQ_WAIT_BUDGET_MS);
    unsigned long long request_id_value, map_version_value, wait_budget_value = 0;
    Py_ssize_t part_size, op_size;
    const char *part_utf8, *op_utf8;
    if (session_id == NULL || payload == NULL || part == NULL || op == NULL ||
        request_id == NULL || map_version == NULL || wait_budget == NULL ||
        !session_id_ok(session_id) || !PyBytes_CheckExact(payload) ||
        !exact_uint(request_id, VARINT_MAX, &request_id_value) ||
        !exact_uint(map_version, VARINT_MAX, &map_version_value) ||
        (wait_budget != Py_None && !exact_uint(wait_budget, U32_MAX, &wait_budget_value)) ||
        (part_utf8 = name_utf8(part, bounds->part_name_bytes_max, &part_size)) == NULL ||
        (op_utf8 = name_utf8(op, bounds->op_name_bytes_max, &op_size)) == NULL) {
        return NULL;
    }
    Py_ssize_t budget_size = wait_budget == Py_None ? 0 : WAIT_BUDGET_BYTES;
    Py_ssize_t payload_size = PyBytes_GET_SIZE(payload);
    Py_ssize_t body_size = REQUEST_HEAD_BYTES + budget_size + part_size + op_size + payload_size;
    if (body_size > bounds->frame_bytes_max) {
        return NULL;
    }
    Py_ssize_t header = header_size(frame_type_request, body_size);
    PyObject *result = PyBytes_FromStringAndSize(NULL, header + body_size);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *p = write_header((unsigned char *)PyBytes_AS_STRING(result),
                                    frame_type_request, body_size);
    memcpy(p, PyBytes_AS_STRING(session_id), SESSION_ID_BYTES);
    write_u64(p + 16, request_id_value);
    write_u64(p + 24, map_version_value);
    p[32] = (unsigned char)part_size;
    p[33] = (unsigned char)(budget_size == 0 ? op_size : (op_size | WAIT_BUDGET_FLAG));
    p += REQUEST_HEAD_BYTES;
    if (budget_size != 0) {
        write_u32(p, (uint32_t)wait_budget_value);
        p += WAIT_BUDGET_BYTES;
    }
    memcpy(p, part_utf8, part_size);
    memcpy(p + part_size, op_utf8, op_size);
    memcpy(p + part_size + op_size, PyBytes_AS_STRING(payload), payload_size);
    return result;
}

static PyObject *
encode_response(PyObject *frame, const Bounds *bounds)
{
    const FrameClass *cls = &response_class;
    PyObject *session_id = get_field(cls, frame, RSP_SESSION_ID);
    PyObject *payload = get_field(cls, frame, RSP_PAYLOAD);
    PyObject *status = get_field(cls, frame, RSP_STATUS);
    PyObject *request_id = get_field(cls, frame, RSP_REQUEST_ID);
    PyObject *map_version = get_field(cls, frame, RSP_MAP_VERSION);
    unsigned long long request_id_value, map_version_value, status_value;
    if (session_id == NULL || payload == NULL || status == NULL || request_id == NULL ||
        map_version == NULL || !session_id_ok(session_id) || !PyBytes_CheckExact(payload) ||
        !exact_uint(request_id, VARINT_MAX, &request_id_value) ||
        !exact_uint(map_version, VARINT_MAX, &map_version_value) ||
        !any_uint(status, 0xFF, &status_value)) {
        return NULL;
    }
    Py_ssize_t payload_size = PyBytes_GET_SIZE(payload);
    Py_ssize_t body_size = RESPONSE_HEAD_BYTES + payload_size;
    if (body_size > bounds->frame_bytes_max) {
        return NULL;
    }
    Py_ssize_t header = header_size(frame_type_response, body_size);
    PyObject *result = PyBytes_FromStringAndSize(NULL, header + body_size);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *p = write_header((unsigned char *)PyBytes_AS_STRING(result),
                                    frame_type_response, body_size);
    memcpy(p, PyBytes_AS_STRING(session_id), SESSION_ID_BYTES);
    write_u64(p + 16, request_id_value);
    write_u64(p + 24, map_version_value);
    p[32] = (unsigned char)status_value;
    memcpy(p + RESPONSE_HEAD_BYTES, PyBytes_AS_STRING(payload), payload_size);
    return result;
}

/* A growable output buffer for HANDOFF, with room for the frame header kept in front. */
typedef struct {
    unsigned char *data;
    Py_ssize_t size, capacity;
    unsigned char inline_data[1024];
} Writer;

static void
writer_init(Writer *writer)
{
    writer->data = writer->inline_data;
    writer->capacity = sizeof(writer->inline_data);
    writer->size = FRAME_HEADER_BYTES_MAX;
}

static void
writer_free(Writer *writer)
{
    if (writer->data != writer->inline_data) {
        PyMem_Free(writer->data);
    }
}

/* Make room for `extra` more bytes; returns where they go, or NULL (MemoryError set). */
static unsigned char *
writer_reserve(Writer *writer, Py_ssize_t extra)
{
    if (extra > PY_SSIZE_T_MAX / 2 - writer->size) {
        PyErr_NoMemory();
        return NULL;
    }
    if (writer->size + extra > writer->capacity) {
        Py_ssize_t capacity = (writer->size + extra) * 2;
        unsigned char *data = PyMem_Malloc(capacity);
        if (data == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memcpy(data, writer->data, writer->size);
        writer_free(writer);
        writer->data = data;
        writer->capacity = capacity;
    }
    unsigned char *p = writer->data + writer->size;
    writer->size += extra;
    return p;
}

static int
writer_put(Writer *writer, const void *bytes, Py_ssize_t size)
{
    unsigned char *p = writer_reserve(writer, size);
    if (p == NULL) {
        return -1;
    }
    memcpy(p, bytes, size);
    return 0;
}

static int
writer_put_varint(Writer *writer, uint64_t value)
{
    unsigned char *p = writer_reserve(writer, varint_size(value));
    if (p == NULL) {
        return -1;
    }
    write_varint(p, value);
    return 0;
}

/* Varint length and bytes of an exact bytes object of at most `maximum` bytes; 0 if not. */
static int
writer_put_prefixed(Writer *writer, PyObject *value, long long maximum)
{
    if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > maximum) {
        return 0;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(value);
    if (writer_put_varint(writer, (uint64_t)size) < 0 ||
        writer_put(writer, PyBytes_AS_STRING(value), size) < 0) {
        return -1;
    }
    return 1;
}

/* An endpoint through the lru-cached Python encoder, which checks and caches it. */
static int
writer_put_endpoint(Writer *writer, PyObject *endpoint, const Bounds *bounds)
{
    PyObject *server_id_bytes_max = PyLong_FromLongLong(bounds->server_id_bytes_max);
    if (server_id_bytes_max == NULL) {
        return -1;
    }
    PyObject *args[2] = {endpoint, server_id_bytes_max};
    PyObject *encoded = PyObject_Vectorcall(encode_endpoint, args, 2, NULL);
    Py_DECREF(server_id_bytes_max);
    if (encoded == NULL) {
        return -1;
    }
    int status = PyBytes_CheckExact(encoded)
                     ? writer_put(writer, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))
                     : -1;
    Py_DECREF(encoded);
    return status;
}

/* Whether the exact strs in `parts` repeat (pairwise for short lists, with a set otherwise). */
static int
parts_repeat(PyObject *parts)
{
    Py_ssize_t count = PyTuple_GET_SIZE(parts);
    if (count > PAIRWISE_NAMES_MAX) {
        PyObject *unique = PySet_New(parts);
        if (unique == NULL) {
            return -1;
        }
        int repeated = PySet_GET_SIZE(unique) != count;
        Py_DECREF(unique);
        return repeated;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        for (Py_ssize_t j = i + 1; j < count; j++) {
            int equal = PyUnicode_Compare(PyTuple_GET_ITEM(parts, i), PyTuple_GET_ITEM(parts, j));
            if (equal == 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* The part list: 1..parts_max distinct names of 1..part_name_bytes_max bytes; 0 if not. */
static int
writer_put_parts(Writer *writer, PyObject *parts, const Bounds *bounds)
{
    if (!PyTuple_CheckExact(parts)) {
        return 0;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(parts);
    if (count == 0 || count > bounds->parts_max) {
        return 0;
    }
    if (writer_put_varint(writer, (uint64_t)count) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t size;
        const char *utf8 = name_utf8(PyTuple_GET_ITEM(parts, i), bounds->part_name_bytes_max,
                                     &size);
        if (utf8 == NULL) {
            return 0;
        }
        unsigned char length = (unsigned char)size;
        if (writer_put(writer, &length, 1) < 0 || writer_put(writer, utf8, size) < 0) {
            return -1;
        }
    }
    int repeated = parts_repeat(parts);
    return repeated < 0 ? -1 : !repeated;
}

/* The extensions: 0..extensions_max (type, value) tuples; 0 if not well-typed or in bounds. */
static int
writer_put_extensions(Writer *writer, PyObject *extensions, const Bounds *bounds)
{
    if (!PyTuple_CheckExact(extensions)) {
        return 0;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(extensions);
    if (count > bounds->extensions_max || writer_put_varint(writer, (uint64_t)count) < 0) {
        return count > bounds->extensions_max ? 0 : -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *extension = PyTuple_GET_ITEM(extensions, i);
        unsigned long long type_value;
        if (!PyTuple_Check(extension) || PyTuple_GET_SIZE(extension) != 2 ||
            !exact_uint(PyTuple_GET_ITEM(extension, 0), VARINT_MAX, &type_value)) {
            return 0;
        }
        if (writer_put_varint(writer, type_value) < 0) {
            return -1;
        }
        int status = writer_put_prefixed(writer, PyTuple_GET_ITEM(extension, 1),
                                         bounds->extension_bytes_max);
        if (status <= 0) {
            return status;
        }
    }
    return 1;
}

/* The fixed head: session_id, sequence, map_version, reason, flags, deadline_ms; 0 if not. */
static int
writer_put_handoff_head(Writer *writer, PyObject *frame)
{
    const FrameClass *cls = &handoff_class;
    PyObject *session_id = get_field(cls, frame, HND_SESSION_ID);
    unsigned long long sequence, map_version, reason, flags, deadline_ms;
    if (session_id == NULL || !session_id_ok(session_id) ||
        !exact_uint(get_field(cls, frame, HND_SEQUENCE), VARINT_MAX, &sequence) ||
        !exact_uint(get_field(cls, frame, HND_MAP_VERSION), VARINT_MAX, &map_version) ||
        !any_uint(get_field(cls, frame, HND_REASON), U16_MAX, &reason) ||
        !any_uint(get_field(cls, frame, HND_FLAGS), U16_MAX, &flags) ||
        !any_uint(get_field(cls, frame, HND_DEADLINE_MS), U32_MAX, &deadline_ms)) {
        return 0;
    }
    unsigned char *p = writer_reserve(writer, HANDOFF_HEAD_BYTES);
    if (p == NULL) {
        return -1;
    }
    memcpy(p, PyBytes_AS_STRING(session_id), SESSION_ID_BYTES);
    write_u64(p + 16, sequence);
    write_u64(p + 24, map_version);
    p[32] = (unsigned char)(reason >> 8);
    p[33] = (unsigned char)reason;
    p[34] = (unsigned char)(flags >> 8);
    p[35] = (unsigned char)flags;
    for (int i = 0; i < 4; i++) {
        p[36 + i] = (unsigned char)(deadline_ms >> (24 - 8 * i));
    }
    return 1;
}

/* current, targets, token, parts and extensions, in this order in `fields`; 0 if not. */
static int
writer_put_handoff_fields(Writer *writer, PyObject *const *fields, const Bounds *bounds)
{
    PyObject *current = fields[0], *targets = fields[1], *token = fields[2];
    PyObject *parts = fields[3], *extensions = fields[4];
    if (!PyTuple_CheckExact(targets)) {
        return 0;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(targets);
    if (count == 0 || count > bounds->targets_max) {
        return 0;
    }
    if (writer_put_endpoint(writer, current, bounds) < 0 ||
        writer_put_varint(writer, (uint64_t)count) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (writer_put_endpoint(writer, PyTuple_GET_ITEM(targets, i), bounds) < 0) {
            return -1;
        }
    }
    int status = writer_put_prefixed(writer, token, bounds->token_bytes_max);
    if (status > 0) {
        status = writer_put_parts(writer, parts, bounds);
    }
    if (status > 0) {
        status = writer_put_extensions(writer, extensions, bounds);
    }
    return status;
}

/* The HANDOFF body after its head: current, targets, token, parts, extensions; 0 if not.
 * The fields are held while the Python endpoint encoder runs. */
static int
writer_put_handoff_rest(Writer *writer, PyObject *frame, const Bounds *bounds)
{
    const FrameClass *cls = &handoff_class;
    PyObject *fields[] = {
        get_field(cls, frame, HND_CURRENT), get_field(cls, frame, HND_TARGETS),
        get_field(cls, frame, HND_TOKEN), get_field(cls, frame, HND_PARTS),
        get_field(cls, frame, HND_EXTENSIONS)};
    const int count = sizeof(fields) / sizeof(fields[0]);
    for (int i = 0; i < count; i++) {
        if (fields[i] == NULL) {
            return 0;
        }
    }
    for (int i = 0; i < count; i++) {
        Py_INCREF(fields[i]);
    }
    int status = writer_put_handoff_fields(writer, fields, bounds);
    for (int i = 0; i < count; i++) {
        Py_DECREF(fields[i]);
    }
    return status;
}
static PyObject *
encode_handoff(PyObject *frame, const Bounds *bounds)
{
    Writer writer;
    writer_init(&writer);
    PyObject *result = NULL;
    int status = writer_put_handoff_head(&writer, frame);
    if (status > 0) {
        status = writer_put_handoff_rest(&writer, frame, bounds);
    }
    Py_ssize_t body_size = writer.size - FRAME_HEADER_BYTES_MAX;
    if (status > 0 && body_size <= bounds->frame_bytes_max) {
        Py_ssize_t header = header_size(frame_type_handoff, body_size);
        unsigned char *start = writer.data + FRAME_HEADER_BYTES_MAX - header;
        write_header(start, frame_type_handoff, body_size);
        result = PyBytes_FromStringAndSize((const char *)start, header + body_size);
    }
    writer_free(&writer);
    return result;
}

/* A CLUSTER_MESSAGE: an exact int kind below 2**62 and an exact bytes body, within
 * frame_bytes_max; NULL with no error set for anything else (the pure encoder decides). */
static PyObject *
encode_cluster(PyObject *frame, const Bounds *bounds)
{
    PyObject *kind_object = get_field(&cluster_class, frame, CLU_KIND);
    PyObject *body = get_field(&cluster_class, frame, CLU_BODY);
    unsigned long long kind;
    if (kind_object == NULL || body == NULL || !PyBytes_CheckExact(body) ||
        !exact_uint(kind_object, VARINT_MAX, &kind)) {
        return NULL;
    }
    Py_ssize_t body_size = varint_size(kind) + PyBytes_GET_SIZE(body);
    if (body_size > bounds->frame_bytes_max) {
        return NULL;
    }
    Py_ssize_t header = header_size(frame_type_cluster, body_size);
    PyObject *result = PyBytes_FromStringAndSize(NULL, header + body_size);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
    p = write_varint(write_header(p, frame_type_cluster, body_size), kind);
    memcpy(p, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body));
    return result;
}

/* ---------------------------------------------------------------------------------------- */
/* The module's functions.                                                                   */

/* Split (positional..., config=) arguments: `config` may come last by keyword only; returns
 * 0 when the call has another shape (the pure function then reports it). */
static int
split_config(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t positional,
             PyObject **config)
{
    *config = default_config;
    if (nargs != positional) {
        return 0;
    }
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) {
        return 1;
    }
    if (PyTuple_GET_SIZE(kwnames) != 1 ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "config") != 0) {
        return 0;
    }
    *config = args[nargs];
    return 1;
}

/* Call a pure-Python function with the arguments of this call, unchanged. */
static PyObject *
call_pure(PyObject *function, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(function, args, PyVectorcall_NARGS(nargsf), kwnames);
}

PyDoc_STRVAR(encode_frame_doc,
"encode_frame(frame, *, config=DEFAULT_CONFIG)\n--\n\n"
"The bytes of one frame: type, length and body as docs/PROTOCOL.md lays them out.\n\n"
"Raises LocalProtocolError when a field cannot be carried (a name too long, a list over its\n"
"bound, an integer outside its range, a body over `config.frame_bytes_max`).");

static PyObject *
speedups_encode_frame(PyObject *module, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *config;
    if (!split_config(args, nargs, kwnames, 1, &config)) {
        return call_pure(pure_encode_frame, args, nargsf, kwnames);
    }
    Bounds bounds;
    PyTypeObject *type = Py_TYPE(args[0]);
    PyObject *encoded = NULL;
    if (!get_bounds(config, &bounds)) {
        encoded = NULL;
    } else if (type == request_class.type) {
        encoded = encode_request(args[0], &bounds);
    } else if (type == response_class.type) {
        encoded = encode_response(args[0], &bounds);
    } else if (type == handoff_class.type) {
        encoded = encode_handoff(args[0], &bounds);} else if (type == cluster_class.type) {
        encoded = encode_cluster(args[0], &bounds);
    }
    if (encoded != NULL) {
        return encoded;
    }
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
    }
    PyObject *pure_args[2] = {args[0], config};
    return PyObject_Vectorcall(pure_encode_frame, pure_args, 1, kwnames_config);
}

/* The bytes of one frame as encode_frame(frame, config=config) returns them. */
static PyObject *
encode_one(PyObject *frame, PyObject *config, const Bounds *bounds)
{
    PyTypeObject *type = Py_TYPE(frame);
    PyObject *encoded = NULL;
    if (type == request_class.type) {
        encoded = encode_request(frame, bounds);
    } else if (type == response_class.type) {
        encoded = encode_response(frame, bounds);
    } else if (type == handoff_class.type) {
        encoded = encode_handoff(frame, bounds);} else if (type == cluster_class.type) {
        encoded = encode_cluster(frame, bounds);
    }
    if (encoded != NULL) {
        return encoded;
    }
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
    }
    PyObject *pure_args[2] = {frame, config};
    return PyObject_Vectorcall(pure_encode_frame, pure_args, 1, kwnames_config);
}

PyDoc_STRVAR(encode_frames_doc,
"encode_frames(frames, *, config=DEFAULT_CONFIG)\n--\n\n"
"The bytes of a list or tuple of frames, one after the other: b\"\".join of their\n"
"encode_frame, in one call. Raises what encode_frame raises for the first frame it refuses.");

static PyObject *
speedups_encode_frames(PyObject *module, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *config;
    Bounds bounds;
    if (!split_config(args, nargs, kwnames, 1, &config) ||
        !(PyList_CheckExact(args[0]) || PyTuple_CheckExact(args[0])) ||
        !get_bounds(config, &bounds)) {
        return call_pure(pure_encode_frames, args, nargsf, kwnames);
    }
    /* A tuple snapshot: encoding may run Python code (the pure codec), which could change a list. */
    PyObject *frames = PySequence_Tuple(args[0]);
    if (frames == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(frames), total = 0;
    PyObject *parts = PyTuple_New(count);
    PyObject *result = NULL;
    if (parts == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *encoded = encode_one(PyTuple_GET_ITEM(frames, i), config, &bounds);
        if (encoded == NULL) {
            goto done;
        }
        if (!PyBytes_Check(encoded)) {
            PyErr_SetString(PyExc_TypeError, "encode_frame returned something else than bytes");
            Py_DECREF(encoded);
            goto done;
        }
        PyTuple_SET_ITEM(parts, i, encoded);
        total += PyBytes_GET_SIZE(encoded);
    }
    if (count == 1) {
        result = Py_NewRef(PyTuple_GET_ITEM(parts, 0));
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result != NULL) {
        char *p = PyBytes_AS_STRING(result);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *encoded = PyTuple_GET_ITEM(parts, i);
            memcpy(p, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
            p += PyBytes_GET_SIZE(encoded);
        }
    }
done:
    Py_XDECREF(parts);
    Py_DECREF(frames);
    return result;
}

/* Body of a non-hot frame (or an unknown type) through the pure decode_body. */
static PyObject *
pure_body(uint64_t frame_type, PyObject *data, Py_ssize_t start, PyObject *config)
{
    PyObject *type_object = PyLong_FromUnsignedLongLong(frame_type);
    PyObject *start_object = type_object == NULL ? NULL : PyLong_FromSsize_t(start);
    if (start_object == NULL) {
        Py_XDECREF(type_object);
        return NULL;
    }
    PyObject *args[4] = {type_object, data, start_object, config};
    PyObject *frame = PyObject_Vectorcall(pure_decode_body, args, 4, NULL);
    Py_DECREF(type_object);
    Py_DECREF(start_object);
    return frame;
}

/* Parse a frame header as the pure decode_frame does; returns the body's start or -1. */
static Py_ssize_t
parse_frame_header(const unsigned char *data, Py_ssize_t size, uint64_t *frame_type,
                   uint64_t *body_size)
{
    static const uint64_t shortest_minimum[9] = {0, 0, 0x40, 0, 0x4000, 0, 0, 0, 0x40000000};
    if (size >= 2 && data[0] < 0x40 && data[1] < 0x80) {
        *frame_type = data[0];
        if (data[1] < 0x40) {
            *body_size = data[1];
            return 2;
        }
        if (size >= 3) {
            *body_size = ((uint64_t)(data[1] & 0x3F) << 8) | data[2];
            return 3;
        }
    } else {
        Py_ssize_t start = read_varint(data, size, 0, frame_type);
        if (start >= 0 && *frame_type < shortest_minimum[start]) {
            malformed("frame type not in its shortest encoding");
            return -1;
        }
        start = start < 0 ? -1 : read_varint(data, size, start, body_size);
        if (start >= 0) {
            return start;
        }
    }
    malformed("data ends inside a frame header");
    return -1;
}

PyDoc_STRVAR(decode_frame_doc,
"decode_frame(data, *, config=DEFAULT_CONFIG)\n--\n\n"
"Decode exactly one complete frame of a known type; anything else is RemoteProtocolError.");

static PyObject *
speedups_decode_frame(PyObject *module, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *config;
    Bounds bounds;
    if (!split_config(args, nargs, kwnames, 1, &config) || !PyBytes_CheckExact(args[0]) ||
        !get_bounds(config, &bounds)) {
        return call_pure(pure_decode_frame, args, nargsf, kwnames);
    }
    PyObject *data = args[0];
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    uint64_t frame_type, body_size;
    Py_ssize_t start = parse_frame_header(
        (const unsigned char *)PyBytes_AS_STRING(data), size, &frame_type, &body_size);
    if (start < 0) {
        return NULL;
    }
    if (bounds.frame_bytes_max < 0 || body_size > (uint64_t)bounds.frame_bytes_max) {
        PyObject *message = PyUnicode_FromFormat("frame body of %llu bytes exceeds %lld",
                                                 (unsigned long long)body_size,
                                                 bounds.frame_bytes_max);
        raise_remote(code_frame_too_large, message);
        return NULL;
    }
    if (body_size != (uint64_t)(size - start)) {
        return malformed("frame length %llu does not match the %zd bytes given",
                         (unsigned long long)body_size, size - start);
    }
    if (is_hot(frame_type)) {
        return decode_hot_bytes(frame_type, data, start, &bounds);
    }
    return pure_body(frame_type, data, start, config);
}

PyDoc_STRVAR(decode_body_doc,
"decode_body(frame_type, data, start=0, config=DEFAULT_CONFIG)\n--\n\n"
"Decode one frame of a known type whose body is `data[start:]`.\n\n"
"Raises RemoteProtocolError: FRAME_ENCODING_ERROR for an invalid body, UNKNOWN_FRAME_TYPE for\n"
"a type this version does not define.");

static PyObject *
speedups_decode_body(PyObject *module, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2 || nargs > 4 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) ||
        !PyLong_Check(args[0]) || !PyBytes_CheckExact(args[1]) ||
        (nargs >= 3 && !PyLong_CheckExact(args[2]))) {
        return call_pure(pure_decode_body, args, nargsf, kwnames);
    }
    PyObject *config = nargs == 4 ? args[3] : default_config;
    Py_ssize_t start = nargs >= 3 ? PyLong_AsSsize_t(args[2]) : 0;
    unsigned long long frame_type = PyLong_AsUnsignedLongLong(args[0]);
    Bounds bounds;
    if (PyErr_Occurred()) {
        PyErr_Clear(); /* out of range: the pure function says what it makes of it */
        return call_pure(pure_decode_body, args, nargsf, kwnames);
    }
    if (start < 0 || start > PyBytes_GET_SIZE(args[1]) || !get_bounds(config, &bounds)) {
        return call_pure(pure_decode_body, args, nargsf, kwnames);
    }
    if (is_hot(frame_type)) {
        return decode_hot_bytes(frame_type, args[1], start, &bounds);
    }
    return call_pure(pure_decode_body, args, nargsf, kwnames);
}

/* The frame types below 0x40 that `allowed` holds, as a bit mask, and whether it holds
 * CLUSTER_MESSAGE; frozensets (FrameDecoder's constants) are cached by identity. 0 on success,
 * -1 with an error set. */
static int
allowed_types(PyObject *allowed, uint64_t *mask, int *cluster)
{
    int frozen = PyFrozenSet_CheckExact(allowed);
    for (int i = 0; frozen && i < ALLOWED_CACHE_SIZE; i++) {
        if (allowed_cache[i].types == allowed) {
            *mask = allowed_cache[i].mask;
            *cluster = allowed_cache[i].cluster;
            return 0;
        }
    }
    uint64_t found = 0;
    int holds_cluster = 0;
    for (long frame_type = 0; frame_type <= ONE_BYTE_TYPES; frame_type++) {
        long wanted = frame_type < ONE_BYTE_TYPES ? frame_type : (long)frame_type_cluster;
        PyObject *number = PyLong_FromLong(wanted);
        int contained = number == NULL ? -1 : PySet_Contains(allowed, number);
        Py_XDECREF(number);
        if (contained < 0) {
            return -1;
        }
        if (frame_type < ONE_BYTE_TYPES) {
            found |= (uint64_t)contained << frame_type;
        } else {
            holds_cluster = contained;
        }
    }
    if (frozen) {
        AllowedTypes *slot = &allowed_cache[allowed_cache_next];
        allowed_cache_next = (allowed_cache_next + 1) % ALLOWED_CACHE_SIZE;
        Py_INCREF(allowed);
        Py_XSETREF(slot->types, allowed);
        slot->mask = found;
        slot->cluster = holds_cluster;
    }
    *mask = found;
    *cluster = holds_cluster;
    return 0;
}

/* The frame at the front of head[0:left] when it is complete and has a common header: a type
 * allowed by `mask` (one byte) or CLUSTER_MESSAGE (two bytes, when `cluster`), then a length
 * below 2**14 (under every permitted frame_bytes_max, so no other check applies). Returns its
 * end and sets its type and where its body starts; -1 for anything else. */
static inline Py_ssize_t
common_frame(const unsigned char *head, Py_ssize_t left, uint64_t mask, int cluster,
             uint64_t *frame_type, Py_ssize_t *start)
{
    Py_ssize_t at; /* where the length starts */
    if (left > 2 && head[0] < ONE_BYTE_TYPES && ((mask >> head[0]) & 1)) {
        *frame_type = head[0];
        at = 1;
    } else if (cluster && left > 3 && head[0] == cluster_head[0] && head[1] == cluster_head[1]) {
        *frame_type = frame_type_cluster;
        at = 2;
    } else {
        return -1;
    }
    unsigned char first = head[at];
    if (first >= 0x80) {
        return -1;
    }
    *start = first < 0x40 ? at + 1 : at + 2;
    Py_ssize_t end = *start + (first < 0x40 ? first : ((first & 0x3F) << 8) | head[at + 1]);
    return end <= left ? end : -1;
}

/* Decode the frame data[0:end] whose body starts at `start`: hot frames and CLUSTER_MESSAGE
 * straight from `data`, others through the pure decode_body on a copy. */
static PyObject *
decode_common(const unsigned char *data, uint64_t frame_type, Py_ssize_t start, Py_ssize_t end,
              PyObject *config, const Bounds *bounds)
{
    if (is_hot(frame_type)) {
        return decode_hot_body(frame_type, data, end, start, bounds);
    }
    if (frame_type == frame_type_cluster) {
        return decode_cluster_body(data, end, start, config);
    }
    PyObject *copy = PyBytes_FromStringAndSize((const char *)data, end);
    PyObject *frame = copy == NULL ? NULL : pure_body(frame_type, copy, start, config);
    Py_XDECREF(copy);
    return frame;
}

PyDoc_STRVAR(pop_frame_doc,
"pop_frame(buffer, allowed, config)\n--\n\n"
"Decode and remove the frame at the front of `buffer` when it is complete and has the common\n"
"header: a one-byte type in `allowed` (or CLUSTER_MESSAGE, when allowed) and a length below\n"
"2**14. None, with the buffer untouched, for anything else.");

static PyObject *
speedups_pop_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Bounds bounds;
    if (nargs != 3 || !PyByteArray_CheckExact(args[0]) || !PyAnySet_Check(args[1]) ||
        !get_bounds(args[2], &bounds)) {
        return PyObject_Vectorcall(pure_pop_frame, args, nargs, NULL);
    }
    PyObject *buffer = args[0];
    Py_ssize_t size = PyByteArray_GET_SIZE(buffer);
    const unsigned char *data = (const unsigned char *)PyByteArray_AS_STRING(buffer);
    uint64_t mask, frame_type;
    int cluster;
    Py_ssize_t start;
    if (size <= 2 || (data[0] >= ONE_BYTE_TYPES && data[0] != cluster_head[0])) {
        Py_RETURN_NONE;
    }
    if (allowed_types(args[1], &mask, &cluster) < 0) {
        return NULL;
    }
    Py_ssize_t end = common_frame(data, size, mask, cluster, &frame_type, &start);
    if (end < 0) {
        Py_RETURN_NONE;
    }
    /* The buffer's memory is exported meanwhile, so nothing the decoder runs can resize it. */
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *frame = decode_common(view.buf, frame_type, start, end, args[2], &bounds);
    PyBuffer_Release(&view);
    if (frame != NULL && PySequence_DelSlice(buffer, 0, end) < 0) {
        Py_CLEAR(frame);
    }
    return frame;
}

PyDoc_STRVAR(pop_frames_doc,
"pop_frames(buffer, allowed, limit, config)\n--\n\n"
"Decode and remove, in one call, the frames pop_frame would return one by one: each complete\n"
"frame with the common header at the front of `buffer`, at most `limit` of them (no bound when\n"
"negative), ending after an ERROR frame. An invalid body raises RemoteProtocolError only\n"
"when it is the first frame;\n"
"otherwise the frames before it are returned and it stays at the front of the buffer.");

static PyObject *
speedups_pop_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Bounds bounds;
    Py_ssize_t limit = nargs == 4 && PyLong_CheckExact(args[2]) ? PyLong_AsSsize_t(args[2]) : -1;
    if (nargs != 4 || !PyByteArray_CheckExact(args[0]) || !PyAnySet_Check(args[1]) ||
        !PyLong_CheckExact(args[2]) || PyErr_Occurred() || !get_bounds(args[3], &bounds)) {
        PyErr_Clear();
        return PyObject_Vectorcall(pure_pop_frames, args, nargs, NULL);
    }
    PyObject *buffer = args[0];
    PyObject *frames = PyList_New(0);
    uint64_t mask;
    int cluster;
    if (frames == NULL || allowed_types(args[1], &mask, &cluster) < 0) {
        Py_XDECREF(frames);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(frames);
        return NULL;
    }
    const unsigned char *data = view.buf;
    Py_ssize_t size = view.len, offset = 0;
    while (limit < 0 || PyList_GET_SIZE(frames) < limit) {
        const unsigned char *head = data + offset;
        uint64_t frame_type;
        Py_ssize_t start;
        Py_ssize_t end = common_frame(head, size - offset, mask, cluster, &frame_type, &start);
        if (end < 0) {
            break;
        }
        PyObject *frame = decode_common(head, frame_type, start, end, args[3], &bounds);
        if (frame == NULL) {
            if (PyList_GET_SIZE(frames) > 0 && PyErr_ExceptionMatches(remote_protocol_error)) {
                PyErr_Clear(); /* the next call raises it, with nothing else decoded first */
                break;
            }
            PyBuffer_Release(&view);
            Py_DECREF(frames);
            return NULL;
        }
        int appended = PyList_Append(frames, frame);
        Py_DECREF(frame);
        if (appended < 0) {
            PyBuffer_Release(&view);
            Py_DECREF(frames);
            return NULL;
        }
        offset += end;
        if (frame_type == frame_type_error) {
            break; /* the peer closes: what follows its ERROR is not for this batch */
        }
    }
    PyBuffer_Release(&view);
    if (offset > 0 && PySequence_DelSlice(buffer, 0, offset) < 0) {
        Py_DECREF(frames);
        return NULL;
    }
    return frames;
}

static PyMethodDef speedups_methods[] = {
    {"encode_frame", (PyCFunction)(void (*)(void))speedups_encode_frame,
     METH_FASTCALL | METH_KEYWORDS, encode_frame_doc},
    {"encode_frames", (PyCFunction)(void (*)(void))speedups_encode_frames,
     METH_FASTCALL | METH_KEYWORDS, encode_frames_doc},
    {"decode_frame", (PyCFunction)(void (*)(void))speedups_decode_frame,
     METH_FASTCALL | METH_KEYWORDS, decode_frame_doc},
    {"decode_body", (PyCFunction)(void (*)(void))speedups_decode_body,
     METH_FASTCALL | METH_KEYWORDS, decode_body_doc},
    {"pop_frame", (PyCFunction)(void (*)(void))speedups_pop_frame, METH_FASTCALL,
     pop_frame_doc},
    {"pop_frames", (PyCFunction)(void (*)(void))speedups_pop_frames, METH_FASTCALL,
     pop_frames_doc},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------------------------------- */
/* Initialisation: everything is looked up in forehand.wire's Python modules, so the tables   */
/* cannot drift from the enums and Structs they mirror.                                      */

static PyObject *
import_attribute(const char *module_name, const char *name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return value;
}

/* The slot offset of field `name` of a msgspec Struct class, found through its descriptor. */
static int
field_offset(PyTypeObject *type, PyObject *name, Py_ssize_t *offset)
{
    PyObject *mro = type->tp_mro;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *descriptor = dict == NULL ? NULL : PyDict_GetItemWithError(dict, name);
        if (descriptor == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            continue;
        }
        if (!Py_IS_TYPE(descriptor, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descriptor)->d_member->type != T_OBJECT_EX) {
            break;
        }
        *offset = ((PyMemberDescrObject *)descriptor)->d_member->offset;
        return 0;
    }
    PyErr_Format(PyExc_ImportError, "%s.%U is not a slot field", type->tp_name, name);
    return -1;
}

static int
load_frame_class(PyObject *frames, const char *class_name, const char *const *names,
                 FrameClass *cls)
{
    PyObject *type = PyObject_GetAttrString(frames, class_name);
    PyObject *fields = type == NULL ? NULL : PyObject_GetAttrString(type, "__struct_fields__");
    if (fields == NULL || !PyType_Check(type) || !PyTuple_Check(fields)) {
        Py_XDECREF(fields);
        Py_XDECREF(type);
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ImportError, "%s is not a msgspec Struct", class_name);
        }
        return -1;
    }
    cls->type = (PyTypeObject *)type;
    cls->count = PyTuple_GET_SIZE(fields);
    cls->kwnames = PyTuple_New(cls->count);
    Py_ssize_t found = 0;
    for (Py_ssize_t i = 0; cls->kwnames != NULL && names[i] != NULL; i++) {
        for (Py_ssize_t j = 0; j < cls->count; j++) {
            PyObject *field = PyTuple_GET_ITEM(fields, j);
            if (PyUnicode_CompareWithASCIIString(field, names[i]) == 0 && i < cls->count) {
                Py_INCREF(field);
                PyTuple_SET_ITEM(cls->kwnames, i, field);
                found += field_offset(cls->type, field, &cls->offsets[i]) == 0;
                break;
            }
        }
    }
    Py_DECREF(fields);
    cls->direct = !PyType_IS_GC(cls->type) && cls->type->tp_itemsize == 0 &&
                  cls->type->tp_alloc == PyType_GenericAlloc &&
                  !PyObject_HasAttrString(type, "__post_init__");
    for (Py_ssize_t i = 0; i < found; i++) {
        cls->direct &= cls->offsets[i] >= (Py_ssize_t)sizeof(PyObject) &&
                       cls->offsets[i] + (Py_ssize_t)sizeof(PyObject *) <= cls->type->tp_basicsize;
    }
    if (cls->kwnames == NULL || found != cls->count || names[found] != NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ImportError, "%s fields differ from the C codec's", class_name);
        }
        return -1;
    }
    return 0;
}

/* A table of an IntEnum's members indexed by value; every value must be below 2**16. */
static int
load_enum_table(const char *enum_name, PyObject ***table, Py_ssize_t *size)
{
    PyObject *members = import_attribute("forehand.wire._enums", enum_name);
    PyObject *list = members == NULL ? NULL : PySequence_List(members);
    Py_XDECREF(members);
    if (list == NULL) {
        return -1;
    }
    long largest = -1, smallest = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        long value = PyLong_AsLong(PyList_GET_ITEM(list, i));
        largest = value > largest ? value : largest;
        smallest = value < smallest ? value : smallest;
    }
    if (PyErr_Occurred() || largest > U16_MAX || smallest < 0) {
        Py_DECREF(list);
        PyErr_Format(PyExc_ImportError, "%s values do not fit the C codec", enum_name);
        return -1;
    }
    *size = largest + 1;
    *table = PyMem_Calloc(*size, sizeof(PyObject *));
    for (Py_ssize_t i = 0; *table != NULL && i < PyList_GET_SIZE(list); i++) {
        PyObject *member = PyList_GET_ITEM(list, i);
        Py_INCREF(member);
        (*table)[PyLong_AsLong(member)] = member;
    }
    Py_DECREF(list);
    return *table == NULL ? (PyErr_NoMemory(), -1) : 0;
}

static int
load_constant(const char *module_name, const char *name, long *value)
{
    PyObject *object = import_attribute(module_name, name);
    if (object == NULL) {
        return -1;
    }
    *value = PyLong_AsLong(object);
    Py_DECREF(object);
    return PyErr_Occurred() ? -1 : 0;
}

static int
load_frames(void)
{
    PyObject *frames = PyImport_ImportModule("forehand.wire._frames");
    if (frames == NULL) {
        return -1;
    }
    int status = load_frame_class(frames, "Request", REQUEST_FIELDS, &request_class);
    if (status == 0) {
        status = load_frame_class(frames, "Response", RESPONSE_FIELDS, &response_class);
    }
    if (status == 0) {
        status = load_frame_class(frames, "Handoff", HANDOFF_FIELDS, &handoff_class);
    }
    if (status == 0) {
        status = load_frame_class(frames, "ClusterMessage", CLUSTER_FIELDS, &cluster_class);
    }
    if (status == 0) {
        extension_type = (PyTypeObject *)PyObject_GetAttrString(frames, "Extension");
        status = extension_type == NULL ? -1 : 0;
    }
    Py_DECREF(frames);
    if (status == 0 && (!PyType_Check(extension_type) ||
                        !PyType_IsSubtype(extension_type, &PyTuple_Type))) {
        PyErr_SetString(PyExc_ImportError, "Extension is not a tuple type");
        status = -1;
    }
    return status;
}

static int
load_enums(void)
{
    PyObject *frame_types = import_attribute("forehand.wire._enums", "FrameType");
    if (frame_types == NULL) {
        return -1;
    }
    const char *names[] = {"REQUEST", "RESPONSE", "HANDOFF", "ERROR", "CLUSTER_MESSAGE"};
    uint64_t *values[] = {&frame_type_request, &frame_type_response, &frame_type_handoff,
                          &frame_type_error, &frame_type_cluster};
    for (int i = 0; i < 5; i++) {
        PyObject *member = PyObject_GetAttrString(frame_types, names[i]);
        *values[i] = member == NULL ? 0 : PyLong_AsUnsignedLongLong(member);
        Py_XDECREF(member);
    }
    Py_DECREF(frame_types);
    if (!PyErr_Occurred() && (frame_type_cluster < ONE_BYTE_TYPES || frame_type_cluster > 0x3FFF)) {
        PyErr_SetString(PyExc_ImportError, "CLUSTER_MESSAGE is not a two-byte frame type");
        return -1;
    }
    cluster_head[0] = (unsigned char)(0x40 | (frame_type_cluster >> 8));
    cluster_head[1] = (unsigned char)(frame_type_cluster & 0xFF);
    if (PyErr_Occurred() || load_enum_table("ResponseStatus", &statuses, &statuses_size) < 0 ||
        load_enum_table("ReasonCode", &reasons, &reasons_size) < 0) {
        return -1;
    }
    reason_unspecified = import_attribute("forehand.wire._enums", "ReasonCode");
    if (reason_unspecified != NULL) {
        Py_SETREF(reason_unspecified, PyObject_GetAttrString(reason_unspecified, "UNSPECIFIED"));
    }
    handoff_flag_type = import_attribute("forehand.wire._enums", "HandoffFlag");
    for (int i = 0; handoff_flag_type != NULL && i < COMMON_FLAGS_COUNT; i++) {
        PyObject *number = PyLong_FromLong(i);
        common_flags[i] = number == NULL ? NULL : PyObject_CallOneArg(handoff_flag_type, number);
        Py_XDECREF(number);
        if (common_flags[i] == NULL) {
            return -1;
        }
    }
    return handoff_flag_type == NULL || reason_unspecified == NULL ? -1 : 0;
}

static int
load_error_codes(void)
{
    PyObject *codes = import_attribute("forehand.wire._enums", "ErrorCode");
    if (codes == NULL) {
        return -1;
    }
    code_frame_encoding_error = PyObject_GetAttrString(codes, "FRAME_ENCODING_ERROR");
    code_frame_too_large = PyObject_GetAttrString(codes, "FRAME_TOO_LARGE");
    Py_DECREF(codes);
    remote_protocol_error = import_attribute("forehand.errors", "RemoteProtocolError");
    kwnames_error_code = Py_BuildValue("(s)", "error_code");
    kwnames_config = Py_BuildValue("(s)", "config");
    struct_error = import_attribute("struct", "error");
    if (code_frame_encoding_error == NULL || code_frame_too_large == NULL ||
        remote_protocol_error == NULL || kwnames_error_code == NULL || kwnames_config == NULL ||
        struct_error == NULL) {
        return -1;
    }
    return 0;
}

static int
load_python_codec(void)
{
    default_config = import_attribute("forehand.wire._config", "DEFAULT_CONFIG");
    pure_encode_frame = import_attribute("forehand.wire._codec", "encode_frame");
    pure_decode_frame = import_attribute("forehand.wire._codec", "decode_frame");
    pure_decode_body = import_attribute("forehand.wire._codec", "decode_body");
    pure_pop_frame = import_attribute("forehand.wire._codec", "pop_frame");
    pure_pop_frames = import_attribute("forehand.wire._codec", "pop_frames");
    pure_encode_frames = import_attribute("forehand.wire._codec", "encode_frames");
    encode_endpoint = import_attribute("forehand.wire._primitives", "encode_endpoint");
    parse_endpoint = import_attribute("forehand.wire._primitives", "_parse_endpoint");
    decoded_endpoints = import_attribute("forehand.wire._primitives", "_decoded_endpoints");
    long cache_max = 0;
    if (default_config == NULL || pure_encode_frame == NULL || pure_decode_frame == NULL ||
        pure_decode_body == NULL || pure_pop_frame == NULL || pure_pop_frames == NULL || pure_encode_frames == NULL || encode_endpoint == NULL || parse_endpoint == NULL ||
        decoded_endpoints == NULL ||
        load_constant("forehand.wire._primitives", "ENDPOINT_CACHE_MAX", &cache_max) < 0) {
        return -1;
    }
    if (!PyDict_CheckExact(decoded_endpoints)) {
        PyErr_SetString(PyExc_ImportError, "_primitives._decoded_endpoints is not a dict");
        return -1;
    }
    endpoint_cache_max = cache_max;
    return 0;
}

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "forehand.wire._speedups",
    .m_doc = "The hot frames of forehand/1 (REQUEST, RESPONSE, HANDOFF) encoded and decoded "
             "in C; every other frame goes to the pure-Python codec.",
    .m_size = -1,
    .m_methods = speedups_methods,
};

/* Any failure to bind to forehand.wire becomes an ImportError, so that forehand.wire falls back
 * to the pure-Python codec instead of failing to import. */
static void
raise_import_error(void)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyErr_Format(PyExc_ImportError, "forehand.wire._speedups does not match forehand.wire: %R",
                 value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (load_error_codes() < 0 || load_enums() < 0 || load_frames() < 0 ||
        load_python_codec() < 0) {
        raise_import_error();
        return NULL;
    }
    return PyModule_Create(&speedups_module);
}
