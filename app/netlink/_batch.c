/* Many netlink datagrams per system call, and the usual audit record parsed without a
 * Python-level regex: the kernel readers' per-datagram cost (docs/performance.md, round 5).
 *
 * Written by hand for speed, measured: a fork+exit life is 6 audit datagrams and 2
 * connector ones, and socket.recv() plus parse_datagram() were a fifth of the daemon's CPU
 * in a fork storm (bench.profile). Pure functions of the bytes read, with the same answers
 * as the Python path they shortcut (app/netlink/audit_records.py parse_datagram: its
 * one-record fast path; tests/unit/test_batch.py compares both on recorded kernel output
 * and on hostile bytes). Anything that path would not take is handed back as raw bytes for
 * the Python parser, so the general cases keep one implementation. The connector's usual
 * datagram (one FORK, EXEC or EXIT) is decoded here the same way (cn_proc.decode's hot
 * path). Optional: without a C
 * compiler the package installs without it and the Python path runs (app/netlink/batch.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define SLOTS 16    /* datagrams per recvmmsg() */
#define HDRLEN 16   /* struct nlmsghdr */
#define MAX_SKIP 64 /* record types a caller may skip */
#define NUM_MAX 48  /* digits of a stamp or serial parsed here; longer goes to Python */

/* How a batch ended: every datagram read, or the budget spent with some maybe left. */
#define DRAINED 0
#define BUDGET -1

/* The NamedTuple classes this module makes (audit_records.Record and .Syscall), given once
 * by register(): only they, checked to be plain tuple subtypes of the right length. */
static PyTypeObject *record_type, *syscall_type;
/* And cn_proc.ForkEvent, .ExecEvent and .ExitEvent, given once by register_proc(). */
static PyTypeObject *fork_type, *exec_type, *exit_type;

/* A `t` holding items[0..n) (references stolen), as tuple.__new__(t, items) makes it. */
static PyObject *
new_tuple(PyTypeObject *t, PyObject **items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i] == NULL) {
            for (Py_ssize_t j = 0; j < n; j++)
                Py_XDECREF(items[j]);
            return NULL;
        }
    }
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14 tuples cache their hash: let tuple.__new__ set up what it needs. */
    PyObject *plain = PyTuple_New(n);
    if (plain == NULL) {
        for (Py_ssize_t j = 0; j < n; j++)
            Py_DECREF(items[j]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(plain, i, items[i]);
    PyObject *args = PyTuple_Pack(1, plain);
    Py_DECREF(plain);
    if (args == NULL)
        return NULL;
    PyObject *out = PyTuple_Type.tp_new(t, args, NULL);
    Py_DECREF(args);
    return out;
#else
    /* What tuple.__new__ does for a subtype (tuple_subtype_new), without the call. */
    PyObject *out = t->tp_alloc(t, n);
    if (out == NULL) {
        for (Py_ssize_t j = 0; j < n; j++)
            Py_DECREF(items[j]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(out, i, items[i]);
    return out;
#endif
}

static int
skip_types(PyObject *skip, long *out, int *count)
{
    PyObject *it = PyObject_GetIter(skip);
    if (it == NULL)
        return -1;
    PyObject *item;
    *count = 0;
    while ((item = PyIter_Next(it)) != NULL) {
        long v = PyLong_AsLong(item);
        Py_DECREF(item);
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(it);
            return -1;
        }
        if (*count == MAX_SKIP) {
            Py_DECREF(it);
            PyErr_SetString(PyExc_ValueError, "too many record types to skip");
            return -1;
        }
        out[(*count)++] = v;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static int
digits(const char *p, const char *end)
{
    const char *q = p;
    while (q < end && *q >= '0' && *q <= '9')
        q++;
    return (int)(q - p);
}

/* `audit(SECONDS.MILLIS:SERIAL): ?BODY` at p, as Record(type, stamp, serial, body); NULL
 * without an exception when the text has another shape (the Python path decides). */
static PyObject *
audit_record(PyTypeObject *record, unsigned mtype, const char *p, const char *end)
{
    char num[NUM_MAX + 1];
    if (end - p < 6 || memcmp(p, "audit(", 6) != 0)
        return NULL;
    const char *s = p + 6;
    int whole = digits(s, end);
    if (whole == 0 || s + whole >= end || s[whole] != '.')
        return NULL;
    int frac = digits(s + whole + 1, end);
    int slen = whole + 1 + frac;
    if (frac == 0 || slen > NUM_MAX)
        return NULL;
    const char *r = s + slen;
    if (r >= end || *r != ':')
        return NULL;
    r++;
    int rlen = digits(r, end);
    if (rlen == 0 || rlen > NUM_MAX || r + rlen + 2 > end || r[rlen] != ')' || r[rlen + 1] != ':')
        return NULL;
    const char *body = r + rlen + 2;
    if (body < end && *body == ' ')
        body++;
    const char *bend = end;
    if (bend > body && (bend[-1] == '\0' || bend[-1] == '\n')) {
        while (bend > body && (bend[-1] == '\0' || bend[-1] == '\n'))
            bend--;
    }

    memcpy(num, s, (size_t)slen);
    num[slen] = '\0';
    double stamp = PyOS_string_to_double(num, NULL, NULL); /* float(): same conversion */
    if (stamp == -1.0 && PyErr_Occurred())
        return NULL; /* the caller clears it: Python's float() decides */
    memcpy(num, r, (size_t)rlen);
    num[rlen] = '\0';

    PyObject *items[4] = {
        PyLong_FromLong((long)mtype),
        PyFloat_FromDouble(stamp),
        PyLong_FromString(num, NULL, 10),
        PyBytes_FromStringAndSize(body, bend - body),
    };
    return new_tuple(record, items, 4);
}

static int
in_skip(unsigned mtype, const long *skip, int nskip)
{
    for (int i = 0; i < nskip; i++)
        if (skip[i] == (long)mtype)
            return 1;
    return 0;
}

/* One datagram appended as its bytes. */
static int
raw_each(PyObject *out, const char *d, Py_ssize_t n, void *ctx)
{
    (void)ctx;
    PyObject *raw = PyBytes_FromStringAndSize(d, n);
    if (raw == NULL)
        return -1;
    int rc = PyList_Append(out, raw);
    Py_DECREF(raw);
    return rc;
}

/* One datagram: a Record appended, nothing (a skipped type), or its raw bytes. */
static int
audit_one(PyObject *out, PyTypeObject *record, const char *d, Py_ssize_t n, const long *skip,
          int nskip)
{
    if (n > 22) {
        uint32_t length;
        uint16_t mtype;
        memcpy(&length, d, 4);
        memcpy(&mtype, d + 4, 2);
        int framed = (Py_ssize_t)length == n - HDRLEN || (Py_ssize_t)length == n;
        if (framed && in_skip(mtype, skip, nskip))
            return 0;
        if (framed) {
            PyObject *rec = audit_record(record, mtype, d + HDRLEN, d + n);
            if (rec != NULL) {
                int rc = PyList_Append(out, rec);
                Py_DECREF(rec);
                return rc;
            }
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_ValueError) &&
                    !PyErr_ExceptionMatches(PyExc_OverflowError))
                    return -1; /* out of memory */
                PyErr_Clear();
            }
        }
    }
    return raw_each(out, d, n, NULL);
}

/* -- proc connector datagrams --------------------------------------------------------------
 * The hot path of cn_proc.decode: a datagram that is one proc message (nlmsghdr, cn_msg of
 * CN_IDX_PROC/CN_VAL_PROC, then proc_event) telling a FORK, EXEC or EXIT becomes its event
 * tuple (cpu, cn_msg seq, timestamp_ns, then the union's u32 fields in the kernel's order).
 * Anything else (an ack, another event, several messages, a foreign or short one) is handed
 * back as bytes for decode(), so those cases keep one implementation. */
#define PROC_HEAD 52 /* nlmsghdr 16 + cn_msg 20 + what, cpu, timestamp_ns 16 */
#define PROC_EVENT_FORK 0x00000001u
#define PROC_EVENT_EXEC 0x00000002u
#define PROC_EVENT_EXIT 0x80000000u

static uint32_t
u32_at(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int
proc_each(PyObject *out, const char *d, Py_ssize_t n, void *ctx)
{
    (void)ctx;
    if (n >= PROC_HEAD && fork_type != NULL) {
        Py_ssize_t length = (Py_ssize_t)u32_at(d);
        int framed = length >= PROC_HEAD &&
                     (length == n || (length < n && ((length + 3) & ~(Py_ssize_t)3) == n));
        if (framed && u32_at(d + 16) == 1 && u32_at(d + 20) == 1) { /* CN_IDX/VAL_PROC */
            uint32_t what = u32_at(d + 36);
            Py_ssize_t room = length - PROC_HEAD;
            PyTypeObject *t = NULL;
            int k = 0;
            if (what == PROC_EVENT_EXIT && room >= 24) {
                t = exit_type;
                k = 6;
            } else if (what == PROC_EVENT_FORK && room >= 16) {
                t = fork_type;
                k = 4;
            } else if (what == PROC_EVENT_EXEC && room >= 8) {
                t = exec_type;
                k = 2;
            }
            if (t != NULL) {
                uint64_t ts;
                memcpy(&ts, d + 44, 8);
                PyObject *items[9];
                items[0] = PyLong_FromUnsignedLong(u32_at(d + 40)); /* cpu */
                items[1] = PyLong_FromUnsignedLong(u32_at(d + 24)); /* cn_msg seq */
                items[2] = PyLong_FromUnsignedLongLong(ts);
                for (int i = 0; i < k; i++)
                    items[3 + i] = PyLong_FromUnsignedLong(u32_at(d + PROC_HEAD + 4 * i));
                PyObject *ev = new_tuple(t, items, 3 + k);
                if (ev == NULL)
                    return -1;
                int rc = PyList_Append(out, ev);
                Py_DECREF(ev);
                return rc;
            }
        }
    }
    return raw_each(out, d, n, NULL);
}

/* Read up to `budget` datagrams from `fd` into the slots of `buf`, `slot` bytes each;
 * `each` turns one into list items. Returns (items, datagrams, status), status DRAINED,
 * BUDGET or the errno of a failed read (ENOBUFS: the kernel dropped some for this socket;
 * what was read before it is in items). */
typedef int (*each_fn)(PyObject *out, const char *d, Py_ssize_t n, void *ctx);

static PyObject *
batch(int fd, Py_buffer *buf, Py_ssize_t slot, Py_ssize_t budget, each_fn each, void *ctx)
{
    struct mmsghdr msgs[SLOTS];
    struct iovec iov[SLOTS];
    Py_ssize_t slots = buf->len / slot;
    if (slots > SLOTS)
        slots = SLOTS;
    if (slots < 1 || budget < 1) {
        PyErr_SetString(PyExc_ValueError, "buffer smaller than one slot, or no budget");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t total = 0;
    int status = BUDGET;
    while (total < budget) {
        unsigned want = (unsigned)(budget - total < slots ? budget - total : slots);
        for (unsigned i = 0; i < want; i++) {
            iov[i].iov_base = (char *)buf->buf + i * slot;
            iov[i].iov_len = (size_t)slot;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        /* The GIL is kept: the read never blocks (MSG_DONTWAIT) and takes microseconds;
         * letting it go would hand the loop's thread to the store's writer for up to the
         * interpreter's switch interval (5 ms) in the middle of a batch. */
        int n = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL), err = n < 0 ? errno : 0;
        if (n < 0) {
            if (err == EINTR)
                continue;
            status = (err == EAGAIN || err == EWOULDBLOCK) ? DRAINED : err;
            break;
        }
        for (int i = 0; i < n; i++) {
            Py_ssize_t len = (Py_ssize_t)msgs[i].msg_len;
            if (len > slot)
                len = slot; /* truncated (MSG_TRUNC): what recv() would have kept */
            if (each(out, (const char *)iov[i].iov_base, len, ctx) < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
        total += n;
        if ((unsigned)n < want) { /* the queue ran dry: no need to hear EAGAIN say so */
            status = DRAINED;
            break;
        }
    }
    return Py_BuildValue("(Nni)", out, total, status);
}

typedef struct {
    PyTypeObject *record;
    long skip[MAX_SKIP];
    int nskip;
} audit_ctx;

static int
audit_each(PyObject *out, const char *d, Py_ssize_t n, void *ctx)
{
    audit_ctx *a = ctx;
    return audit_one(out, a->record, d, n, a->skip, a->nskip);
}

static int
registered(audit_ctx *a)
{
    if (record_type == NULL || syscall_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "register(Record, Syscall) first");
        return -1;
    }
    a->record = record_type;
    return 0;
}

static int
plain_tuple_type(PyObject *t, Py_ssize_t fields)
{
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type) ||
        ((PyTypeObject *)t)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)t)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "a NamedTuple class is wanted");
        return -1;
    }
    PyObject *f = PyObject_GetAttrString(t, "_fields");
    Py_ssize_t n = f != NULL && PyTuple_Check(f) ? PyTuple_GET_SIZE(f) : -1;
    Py_XDECREF(f);
    PyErr_Clear();
    if (n != fields) {
        PyErr_Format(PyExc_TypeError, "a NamedTuple class of %zd fields is wanted", fields);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(register_doc,
"register(Record, Syscall)\n\n"
"The NamedTuple classes of audit_records this module makes (4 and 10 fields).");

static PyObject *
register_types(PyObject *mod, PyObject *args)
{
    PyObject *rec, *sys;
    (void)mod;
    if (!PyArg_ParseTuple(args, "OO", &rec, &sys))
        return NULL;
    if (plain_tuple_type(rec, 4) < 0 || plain_tuple_type(sys, 10) < 0)
        return NULL;
    Py_INCREF(rec);
    Py_INCREF(sys);
    Py_XSETREF(record_type, (PyTypeObject *)rec);
    Py_XSETREF(syscall_type, (PyTypeObject *)sys);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(audit_batch_doc,
"audit_batch(fd, buf, slot, budget, skip) -> (items, datagrams, status)\n\n"
"Audit datagrams read with recvmmsg(): each one-record datagram as a Record, skipped\n"
"types dropped, anything else as its raw bytes. status: 0 drained, -1 budget spent,\n"
"else the errno of the read that failed.");

static PyObject *
audit_batch(PyObject *mod, PyObject *args)
{
    int fd;
    Py_buffer buf;
    Py_ssize_t slot, budget;
    PyObject *skip;
    audit_ctx a;
    (void)mod;
    if (!PyArg_ParseTuple(args, "iw*nnO", &fd, &buf, &slot, &budget, &skip))
        return NULL;
    PyObject *res = NULL;
    if (slot >= 64 && registered(&a) == 0 && skip_types(skip, a.skip, &a.nskip) == 0)
        res = batch(fd, &buf, slot, budget, audit_each, &a);
    else if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "slot too small");
    PyBuffer_Release(&buf);
    return res;
}

PyDoc_STRVAR(parse_audit_doc,
"parse_audit(data, skip) -> list\n\n"
"What audit_batch makes of one datagram (for tests): [record], [] or [data].");

static PyObject *
parse_audit(PyObject *mod, PyObject *args)
{
    Py_buffer data;
    PyObject *skip;
    audit_ctx a;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*O", &data, &skip))
        return NULL;
    PyObject *out = NULL;
    if (registered(&a) == 0 && skip_types(skip, a.skip, &a.nskip) == 0) {
        out = PyList_New(0);
        if (out != NULL && audit_one(out, a.record, data.buf, data.len, a.skip, a.nskip) < 0)
            Py_CLEAR(out);
    }
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(raw_batch_doc,
"raw_batch(fd, buf, slot, budget) -> (datagrams, count, status)\n\n"
"Datagrams read with recvmmsg(), each as bytes (at most `slot` of it, as recv(slot)).");

/* (fd, buf, slot, budget) read with `each`, for raw_batch and proc_batch. */
static PyObject *
batch_args(PyObject *args, each_fn each, Py_ssize_t min_slot)
{
    int fd;
    Py_buffer buf;
    Py_ssize_t slot, budget;
    if (!PyArg_ParseTuple(args, "iw*nn", &fd, &buf, &slot, &budget))
        return NULL;
    PyObject *res = NULL;
    if (slot >= min_slot)
        res = batch(fd, &buf, slot, budget, each, NULL);
    else
        PyErr_SetString(PyExc_ValueError, "slot too small");
    PyBuffer_Release(&buf);
    return res;
}

static PyObject *
raw_batch(PyObject *mod, PyObject *args)
{
    (void)mod;
    return batch_args(args, raw_each, 1);
}


PyDoc_STRVAR(register_proc_doc,
"register_proc(ForkEvent, ExecEvent, ExitEvent)\n\n"
"The NamedTuple classes of cn_proc this module makes (7, 5 and 9 fields).");

static PyObject *
register_proc(PyObject *mod, PyObject *args)
{
    PyObject *f, *e, *x;
    (void)mod;
    if (!PyArg_ParseTuple(args, "OOO", &f, &e, &x))
        return NULL;
    if (plain_tuple_type(f, 7) < 0 || plain_tuple_type(e, 5) < 0 || plain_tuple_type(x, 9) < 0)
        return NULL;
    Py_INCREF(f);
    Py_INCREF(e);
    Py_INCREF(x);
    Py_XSETREF(fork_type, (PyTypeObject *)f);
    Py_XSETREF(exec_type, (PyTypeObject *)e);
    Py_XSETREF(exit_type, (PyTypeObject *)x);
    Py_RETURN_NONE;
}

static int
proc_registered(void)
{
    if (fork_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "register_proc(ForkEvent, ExecEvent, ExitEvent) first");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(proc_batch_doc,
"proc_batch(fd, buf, slot, budget) -> (items, datagrams, status)\n\n"
"Connector datagrams read with recvmmsg(): each FORK, EXEC or EXIT as its event, anything\n"
"else as its raw bytes (for cn_proc.decode). status as audit_batch's.");

static PyObject *
proc_batch(PyObject *mod, PyObject *args)
{
    (void)mod;
    return proc_registered() < 0 ? NULL : batch_args(args, proc_each, PROC_HEAD);
}

PyDoc_STRVAR(parse_proc_doc,
"parse_proc(data) -> list\n\n"
"What proc_batch makes of one datagram (for tests): [event] or [data].");

static PyObject *
parse_proc(PyObject *mod, PyObject *args)
{
    Py_buffer data;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    PyObject *out = NULL;
    if (proc_registered() == 0) {
        out = PyList_New(0);
        if (out != NULL && proc_each(out, data.buf, data.len, NULL) < 0)
            Py_CLEAR(out);
    }
    PyBuffer_Release(&data);
    return out;
}


/* -- the SYSCALL record's fields ----------------------------------------------------------
 * The same groups as audit_records._SYSCALL, a regex match (not fullmatch) of
 *   arch=([0-9a-f]+) syscall=([0-9]+) (?:success=([a-z]+) exit=(-?[0-9]+) )?
 *   a0=([0-9a-f]+) .*? ppid=([0-9]+) pid=([0-9]+) auid=[0-9]+ uid=([0-9]+) .*?
 *   comm=(\S+) exe=(\S+)
 * with its backtracking: each lazy `.*?` tries every later position up to a newline (`.`
 * does not cross one). A record of another shape gives None and the Python path decides. */

typedef struct {
    const char *p;
    Py_ssize_t n;
} span;

static int
is_space(char c) /* \s of a bytes pattern */
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static const char *
lit(const char *p, const char *end, const char *s)
{
    size_t n = strlen(s);
    return (end - p >= (Py_ssize_t)n && memcmp(p, s, n) == 0) ? p + n : NULL;
}

static const char *
run(const char *p, const char *end, int (*ok)(char), span *g)
{
    const char *q = p;
    while (q < end && ok(*q))
        q++;
    if (q == p)
        return NULL;
    if (g != NULL) {
        g->p = p;
        g->n = q - p;
    }
    return q;
}

static int is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }
static int is_dec(char c) { return c >= '0' && c <= '9'; }
static int is_lower(char c) { return c >= 'a' && c <= 'z'; }
static int not_space(char c) { return !is_space(c); }

/* From `p`: ` comm=(\S+) exe=(\S+)` after a lazy `.*?`. */
static int
comm_exe(const char *p, const char *end, span *g)
{
    for (const char *j = p;; j++) {
        const char *q = lit(j, end, " comm=");
        if (q && (q = run(q, end, not_space, &g[8])) && (q = lit(q, end, " exe=")) &&
            run(q, end, not_space, &g[9]))
            return 1;
        if (j >= end || *j == '\n')
            return 0;
    }
}

/* From `p`: `a0=... .*? ppid=... comm=... exe=...`. */
static int
from_a0(const char *p, const char *end, span *g)
{
    const char *q = lit(p, end, "a0=");
    if (!q || !(q = run(q, end, is_hex, &g[4])) || !(q = lit(q, end, " ")))
        return 0;
    for (const char *i = q;; i++) {
        const char *r = lit(i, end, " ppid=");
        if (r && (r = run(r, end, is_dec, &g[5])) && (r = lit(r, end, " pid=")) &&
            (r = run(r, end, is_dec, &g[6])) && (r = lit(r, end, " auid=")) &&
            (r = run(r, end, is_dec, NULL)) && (r = lit(r, end, " uid=")) &&
            (r = run(r, end, is_dec, &g[7])) && (r = lit(r, end, " ")) && comm_exe(r, end, g))
            return 1;
        if (i >= end || *i == '\n')
            return 0;
    }
}

static int
syscall_spans(const char *p, const char *end, span *g)
{
    const char *q = lit(p, end, "arch=");
    if (!q || !(q = run(q, end, is_hex, &g[0])) || !(q = lit(q, end, " syscall=")) ||
        !(q = run(q, end, is_dec, &g[1])) || !(q = lit(q, end, " ")))
        return 0;
    const char *r = lit(q, end, "success=");
    if (r && (r = run(r, end, is_lower, &g[2])) && (r = lit(r, end, " exit="))) {
        const char *digits = (r < end && *r == '-') ? r + 1 : r;
        const char *e = run(digits, end, is_dec, NULL);
        if (e && lit(e, end, " ")) {
            g[3].p = r;
            g[3].n = e - r;
            if (from_a0(e + 1, end, g))
                return 1;
        }
    }
    g[2].p = g[3].p = NULL; /* the optional group, not taken */
    return from_a0(q, end, g);
}

PyDoc_STRVAR(parse_syscall_doc,
"parse_syscall(body) -> Syscall | None\n\n"
"The SYSCALL record's fields as audit_records._SYSCALL matches them, or None.");

static PyObject *
parse_syscall(PyObject *mod, PyObject *args)
{
    Py_buffer body;
    span g[10];
    audit_ctx a;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*", &body))
        return NULL;
    if (registered(&a) < 0) {
        PyBuffer_Release(&body);
        return NULL;
    }
    memset(g, 0, sizeof g);
    const char *p = body.buf;
    if (!syscall_spans(p, p + body.len, g)) {
        PyBuffer_Release(&body);
        Py_RETURN_NONE;
    }
    PyObject *items[10];
    for (int i = 0; i < 10; i++) {
        if (g[i].p == NULL) {
            items[i] = Py_None;
            Py_INCREF(Py_None);
        } else {
            items[i] = PyBytes_FromStringAndSize(g[i].p, g[i].n);
        }
    }
    PyBuffer_Release(&body);
    return new_tuple(syscall_type, items, 10);
}

static PyMethodDef methods[] = {
    {"parse_syscall", parse_syscall, METH_VARARGS, parse_syscall_doc},
    {"register", register_types, METH_VARARGS, register_doc},
    {"audit_batch", audit_batch, METH_VARARGS, audit_batch_doc},
    {"parse_audit", parse_audit, METH_VARARGS, parse_audit_doc},
    {"raw_batch", raw_batch, METH_VARARGS, raw_batch_doc},
    {"register_proc", register_proc, METH_VARARGS, register_proc_doc},
    {"proc_batch", proc_batch, METH_VARARGS, proc_batch_doc},
    {"parse_proc", parse_proc, METH_VARARGS, parse_proc_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "app.netlink._batch", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__batch(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "SLOTS", SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "DRAINED", DRAINED) < 0 ||
        PyModule_AddIntConstant(m, "BUDGET", BUDGET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
