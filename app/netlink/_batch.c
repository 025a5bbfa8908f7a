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
#define AUDIT_SYSCALL_TYPE 1300
#define AUDIT_EOE_TYPE 1320
#define NUM_MAX 48  /* digits of a stamp or serial parsed here; longer goes to Python */

/* How a batch ended: every datagram read, or the budget spent with some maybe left. */
#define DRAINED 0
#define BUDGET -1

/* The NamedTuple classes this module makes (audit_records.Record and .Syscall), given once
 * by register(): only they, checked to be plain tuple subtypes of the right length. */
static PyTypeObject *record_type, *syscall_type;
/* And cn_proc.ForkEvent, .ExecEvent and .ExitEvent, given once by register_proc(). */
static PyTypeObject *fork_type, *exec_type, *exit_type;

/* What the connector told, for audit's reports of the same forks and exits (below). */
typedef struct Confirmations Confirmations;
static PyTypeObject confirmations_type;
static int conf_audit(Confirmations *c, PyObject *out, const char *p, const char *end);
static int conf_eoe(Confirmations *c, const char *p, const char *end);
static void conf_proc(Confirmations *c, uint32_t what, const char *u, Py_ssize_t room);

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

/* The head of `audit(SECONDS.MILLIS:SERIAL): ?BODY` at p: the stamp, the serial's digits and
 * the body (its trailing NULs and newlines cut). 1 when it has that shape, 0 when not (the
 * Python path decides), -1 with a Python error set when float() would raise. */
static int
audit_head(const char *p, const char *end, double *stamp, char *serial, const char **body,
           const char **bend)
{
    char num[NUM_MAX + 1];
    if (end - p < 6 || memcmp(p, "audit(", 6) != 0)
        return 0;
    const char *s = p + 6;
    int whole = digits(s, end);
    if (whole == 0 || s + whole >= end || s[whole] != '.')
        return 0;
    int frac = digits(s + whole + 1, end);
    int slen = whole + 1 + frac;
    if (frac == 0 || slen > NUM_MAX)
        return 0;
    const char *r = s + slen;
    if (r >= end || *r != ':')
        return 0;
    r++;
    int rlen = digits(r, end);
    if (rlen == 0 || rlen > NUM_MAX || r + rlen + 2 > end || r[rlen] != ')' || r[rlen + 1] != ':')
        return 0;
    const char *b = r + rlen + 2;
    if (b < end && *b == ' ')
        b++;
    const char *e = end;
    while (e > b && (e[-1] == '\0' || e[-1] == '\n'))
        e--;
    memcpy(num, s, (size_t)slen);
    num[slen] = '\0';
    *stamp = PyOS_string_to_double(num, NULL, NULL); /* float(): same conversion */
    if (*stamp == -1.0 && PyErr_Occurred())
        return -1; /* the caller clears it: Python's float() decides */
    memcpy(serial, r, (size_t)rlen);
    serial[rlen] = '\0';
    *body = b;
    *bend = e;
    return 1;
}

/* After a parse of the head failed with an error set: 0 when it is float()'s (ValueError,
 * OverflowError), cleared, for the Python path to decide; -1 for any other (no memory). */
static int
float_error_cleared(void)
{
    if (!PyErr_ExceptionMatches(PyExc_ValueError) &&
        !PyErr_ExceptionMatches(PyExc_OverflowError))
        return -1;
    PyErr_Clear();
    return 0;
}

/* `audit(SECONDS.MILLIS:SERIAL): ?BODY` at p, as Record(type, stamp, serial, body); NULL
 * without an exception when the text has another shape (the Python path decides). */
static PyObject *
audit_record(PyTypeObject *record, unsigned mtype, const char *p, const char *end)
{
    char serial[NUM_MAX + 1];
    double stamp;
    const char *body, *bend;
    if (audit_head(p, end, &stamp, serial, &body, &bend) <= 0)
        return NULL;
    PyObject *items[4] = {
        PyLong_FromLong((long)mtype),
        PyFloat_FromDouble(stamp),
        PyLong_FromString(serial, NULL, 10),
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

/* One datagram: a Record appended, a Confirmed (a SYSCALL record `conf` matched), nothing
 * (a skipped type), or its raw bytes. */
static int
audit_one(PyObject *out, PyTypeObject *record, const char *d, Py_ssize_t n, const long *skip,
          int nskip, Confirmations *conf)
{
    if (n > 22) {
        uint32_t length;
        uint16_t mtype;
        memcpy(&length, d, 4);
        memcpy(&mtype, d + 4, 2);
        int framed = (Py_ssize_t)length == n - HDRLEN || (Py_ssize_t)length == n;
        if (framed && in_skip(mtype, skip, nskip))
            return 0;
        if (framed && conf != NULL && mtype == AUDIT_SYSCALL_TYPE) {
            int done = conf_audit(conf, out, d + HDRLEN, d + n);
            if (done != 0)
                return done < 0 ? -1 : 0;
        }
        if (framed && conf != NULL && mtype == AUDIT_EOE_TYPE) {
            int done = conf_eoe(conf, d + HDRLEN, d + n);
            if (done != 0)
                return done < 0 ? -1 : 0; /* the end of a confirmed event: dropped */
        }
        if (framed) {
            PyObject *rec = audit_record(record, mtype, d + HDRLEN, d + n);
            if (rec != NULL) {
                int rc = PyList_Append(out, rec);
                Py_DECREF(rec);
                return rc;
            }
            if (PyErr_Occurred() && float_error_cleared() < 0)
                return -1;
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
                if (ctx != NULL)
                    conf_proc(ctx, what, d + PROC_HEAD, room);
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
    Confirmations *conf;
} audit_ctx;

static int
audit_each(PyObject *out, const char *d, Py_ssize_t n, void *ctx)
{
    audit_ctx *a = ctx;
    return audit_one(out, a->record, d, n, a->skip, a->nskip, a->conf);
}

/* An optional `confirm` argument: None (NULL) or a Confirmations. */
static int
conf_arg(PyObject *o, Confirmations **out)
{
    if (o == NULL || o == Py_None) {
        *out = NULL;
        return 0;
    }
    if (Py_TYPE(o) != &confirmations_type) {
        PyErr_SetString(PyExc_TypeError, "confirm: a Confirmations or None is wanted");
        return -1;
    }
    *out = (Confirmations *)o;
    return 0;
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
"audit_batch(fd, buf, slot, budget, skip, confirm=None) -> (items, datagrams, status)\n\n"
"Audit datagrams read with recvmmsg(): each one-record datagram as a Record, skipped\n"
"types dropped, anything else as its raw bytes. status: 0 drained, -1 budget spent,\n"
"else the errno of the read that failed. With `confirm`, a SYSCALL record of a fork or\n"
"exit_group the connector told already comes back as a Confirmed.");

static PyObject *
audit_batch(PyObject *mod, PyObject *args)
{
    int fd;
    Py_buffer buf;
    Py_ssize_t slot, budget;
    PyObject *skip, *confirm = NULL;
    audit_ctx a;
    (void)mod;
    if (!PyArg_ParseTuple(args, "iw*nnO|O", &fd, &buf, &slot, &budget, &skip, &confirm))
        return NULL;
    PyObject *res = NULL;
    if (slot >= 64 && registered(&a) == 0 && skip_types(skip, a.skip, &a.nskip) == 0 &&
        conf_arg(confirm, &a.conf) == 0)
        res = batch(fd, &buf, slot, budget, audit_each, &a);
    else if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "slot too small");
    PyBuffer_Release(&buf);
    return res;
}

PyDoc_STRVAR(parse_audit_doc,
"parse_audit(data, skip, confirm=None) -> list\n\n"
"What audit_batch makes of one datagram (for tests): [record], [confirmed], [] or [data].");

static PyObject *
parse_audit(PyObject *mod, PyObject *args)
{
    Py_buffer data;
    PyObject *skip, *confirm = NULL;
    audit_ctx a;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*O|O", &data, &skip, &confirm))
        return NULL;
    PyObject *out = NULL;
    if (registered(&a) == 0 && skip_types(skip, a.skip, &a.nskip) == 0 &&
        conf_arg(confirm, &a.conf) == 0) {
        out = PyList_New(0);
        if (out != NULL &&
            audit_one(out, a.record, data.buf, data.len, a.skip, a.nskip, a.conf) < 0)
            Py_CLEAR(out);
    }
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(raw_batch_doc,
"raw_batch(fd, buf, slot, budget) -> (datagrams, count, status)\n\n"
"Datagrams read with recvmmsg(), each as bytes (at most `slot` of it, as recv(slot)).");

/* (fd, buf, slot, budget[, confirm]) read with `each`, for raw_batch and proc_batch; the
 * Confirmations (or NULL) is `each`'s context. */
static PyObject *
batch_args(PyObject *args, each_fn each, Py_ssize_t min_slot)
{
    int fd;
    Py_buffer buf;
    Py_ssize_t slot, budget;
    PyObject *confirm = NULL;
    Confirmations *conf;
    if (!PyArg_ParseTuple(args, "iw*nn|O", &fd, &buf, &slot, &budget, &confirm))
        return NULL;
    PyObject *res = NULL;
    if (conf_arg(confirm, &conf) < 0)
        ;
    else if (slot >= min_slot)
        res = batch(fd, &buf, slot, budget, each, conf);
    else
        PyErr_SetString(PyExc_ValueError, "slot too small");
    PyBuffer_Release(&buf);
    return res;
}

static PyObject *
raw_batch(PyObject *mod, PyObject *args)
{
    (void)mod;
    if (PyTuple_GET_SIZE(args) > 4) {
        PyErr_SetString(PyExc_TypeError, "raw_batch takes 4 arguments");
        return NULL;
    }
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
"proc_batch(fd, buf, slot, budget, confirm=None) -> (items, datagrams, status)\n\n"
"Connector datagrams read with recvmmsg(): each FORK, EXEC or EXIT as its event, anything\n"
"else as its raw bytes (for cn_proc.decode). status as audit_batch's. A process's FORK\n"
"and a leader's EXIT are noted in `confirm`, for audit_batch.");

static PyObject *
proc_batch(PyObject *mod, PyObject *args)
{
    (void)mod;
    return proc_registered() < 0 ? NULL : batch_args(args, proc_each, PROC_HEAD);
}

PyDoc_STRVAR(parse_proc_doc,
"parse_proc(data, confirm=None) -> list\n\n"
"What proc_batch makes of one datagram (for tests): [event] or [data].");

static PyObject *
parse_proc(PyObject *mod, PyObject *args)
{
    Py_buffer data;
    PyObject *confirm = NULL;
    Confirmations *conf;
    (void)mod;
    if (!PyArg_ParseTuple(args, "y*|O", &data, &confirm))
        return NULL;
    PyObject *out = NULL;
    if (proc_registered() == 0 && conf_arg(confirm, &conf) == 0) {
        out = PyList_New(0);
        if (out != NULL && proc_each(out, data.buf, data.len, conf) < 0)
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

/* -- confirmations -------------------------------------------------------------------------
 * With both kernel sources each fork and exit of a storm is told twice: by the connector,
 * read first (app/core/service.py), and by audit. Audit's report of a transition already
 * told adds only the audit bit, its uid and a canary's tally; its full path (a Record, the
 * assembler, LifeEvents, the tracker's duplicate check) cost about 7 us a life (round 7 of
 * docs/performance.md). A Confirmations table, given to proc_batch and to audit_batch,
 * remembers by pid each process FORK (child and parent) and leader EXIT (its status) the
 * connector told; an audit SYSCALL record of a fork or exit_group that matches one comes back
 * as a short Confirmed(kind, pid, ppid, uid, code, stamp, serial) instead of its Record, and the
 * entry is used up. Anything else goes the usual way: a clone with CLONE_THREAD or
 * CLONE_PARENT, a failed call, another status, a pid the table does not hold. The
 * Confirmed carries the record's serial, for the assembler to count, and the event's EOE is
 * dropped when it comes (the last CONF_RING confirmed serials are remembered; an EOE that
 * comes later than that goes to the assembler as ever). An entry is a cache, overwritten by
 * the next pid of its slot: a miss only costs the full path. */
#define CONF_SLOTS 16384 /* a power of two */
#define CONF_CALLS 16
#define CONF_RING 64 /* confirmed serials whose EOE is still to come */
#define CONF_CLONE 1 /* clone(2): its flags in a0 */
#define CONF_FORK 2  /* fork, vfork, clone3: a process on the connector's word */
#define CONF_EXIT 3  /* exit_group */
#define CONFIRMED_FORK 1
#define CONFIRMED_EXIT 2
#define F_CLONE_PARENT 0x00008000ull
#define F_CLONE_THREAD 0x00010000ull

typedef struct {
    uint32_t pid, ppid, status;
    uint8_t forked, exited;
} conf_slot;

typedef struct {
    char arch[16], nr[16];
    Py_ssize_t arch_n, nr_n;
    int kind;
} conf_call;

enum {
    RECORDED_FORKS, RECORDED_EXITS, CONFIRMED_FORKS, CONFIRMED_EXITS, UNMATCHED, EOES_DROPPED,
    NCOUNTS
};
static const char *const count_names[NCOUNTS] = {
    "recorded_forks", "recorded_exits", "confirmed_forks", "confirmed_exits", "unmatched",
    "confirmed_eoes",
};

struct Confirmations {
    PyObject_HEAD
    PyTypeObject *cls; /* Confirmed: 7 fields */
    conf_call calls[CONF_CALLS];
    int ncalls;
    unsigned long long counts[NCOUNTS];
    unsigned long long clears;
    /* The confirmed events whose EOE is still to come: serial and stamp (ms, low 32 bits;
     * a serial alone comes round again after a u32 wrap). */
    uint32_t ring_serial[CONF_RING], ring_ms[CONF_RING];
    uint8_t ring_used[CONF_RING];
    int ring_at;
    conf_slot slot[CONF_SLOTS];
};

/* The connector's event `what` with its union at u (`room` bytes of it). */
static void
conf_proc(Confirmations *c, uint32_t what, const char *u, Py_ssize_t room)
{
    if (what == PROC_EVENT_FORK && room >= 16) {
        uint32_t ptgid = u32_at(u + 4), child = u32_at(u + 8), ctgid = u32_at(u + 12);
        conf_slot *s = &c->slot[child & (CONF_SLOTS - 1)];
        if (child != ctgid || child == 0) { /* a thread: its tid may be a noted pid reused */
            if (s->pid == child)
                s->pid = 0;
            return;
        }
        s->pid = child;
        s->ppid = ptgid;
        s->forked = 1;
        s->exited = 0;
        c->counts[RECORDED_FORKS]++;
    } else if (what == PROC_EVENT_EXIT && room >= 24) {
        uint32_t pid = u32_at(u), tgid = u32_at(u + 4);
        conf_slot *s = &c->slot[pid & (CONF_SLOTS - 1)];
        if (pid != tgid || s->pid != pid)
            return; /* a thread, or a process whose FORK the table does not hold */
        s->status = u32_at(u + 8);
        s->exited = 1;
        c->counts[RECORDED_EXITS]++;
    }
}

/* A span of digits in `base` (10, or 16 in the kernel's lower case) as a value of at most
 * `max` digits; 0 when it is none or holds another character. */
static int
span_num(span g, int base, Py_ssize_t max, uint64_t *out)
{
    if (g.p == NULL || g.n < 1 || g.n > max)
        return 0;
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < g.n; i++) {
        char ch = g.p[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0 || d >= base)
            return 0;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    *out = v;
    return 1;
}

/* A span of decimal digits as a u32 (a pid, uid, serial); 0 when it does not fit. */
static int
span_u32(span g, uint32_t *out)
{
    uint64_t v;
    if (!span_num(g, 10, 10, &v) || v > 0xFFFFFFFFull)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* A record's stamp in milliseconds, its low 32 bits: the SYSCALL record and the EOE of one
 * event carry the same text, so the same double and the same value. */
static uint32_t
stamp_ms(double stamp)
{
    return (uint32_t)(uint64_t)(stamp * 1000.0 + 0.5);
}

/* The head of a record for the table: 1 with its stamp, serial and body; 0 when it has
 * another shape or a serial past a u32 (the usual way decides); -1 on an error. */
static int
conf_head(const char *p, const char *end, double *stamp, uint32_t *serial, const char **body,
          const char **bend)
{
    char digits[NUM_MAX + 1];
    int head = audit_head(p, end, stamp, digits, body, bend);
    if (head < 0)
        return float_error_cleared();
    span g = {digits, (Py_ssize_t)strlen(digits)};
    return head > 0 && span_u32(g, serial);
}

/* An audit record (after nlmsghdr) of type SYSCALL: 1 with a Confirmed appended when it
 * tells a fork or exit the table holds, 0 when it goes the usual way, -1 on error. */
static int
conf_audit(Confirmations *c, PyObject *out, const char *p, const char *end)
{
    double stamp;
    uint32_t sn;
    const char *body, *bend;
    int head = conf_head(p, end, &stamp, &sn, &body, &bend);
    if (head <= 0)
        return head;
    /* The call first (`arch=HEX syscall=DEC `, as syscall_spans starts): most SYSCALL
     * records of a storm are forks and exits, the rest need not be scanned twice. */
    span arch, nr;
    const char *q = lit(body, bend, "arch=");
    if (!q || !(q = run(q, bend, is_hex, &arch)) || !(q = lit(q, bend, " syscall=")) ||
        !run(q, bend, is_dec, &nr))
        return 0;
    int kind = 0;
    for (int i = 0; i < c->ncalls; i++) {
        conf_call *k = &c->calls[i];
        if (arch.n == k->arch_n && nr.n == k->nr_n && memcmp(arch.p, k->arch, k->arch_n) == 0 &&
            memcmp(nr.p, k->nr, k->nr_n) == 0) {
            kind = k->kind;
            break;
        }
    }
    if (kind == 0)
        return 0;
    span g[10];
    memset(g, 0, sizeof g);
    uint32_t pid, uid, child = 0, code = 0;
    uint64_t a0;
    if (!syscall_spans(body, bend, g) || !span_u32(g[6], &pid) || !span_u32(g[7], &uid) ||
        !span_num(g[4], 16, 16, &a0))
        return 0;
    conf_slot *s;
    if (kind == CONF_EXIT) {
        if (g[2].p != NULL) /* exit_group does not return: a record of another shape */
            return 0;
        code = (uint32_t)(a0 & 0xFF);
        s = &c->slot[pid & (CONF_SLOTS - 1)];
        if (s->pid != pid || !s->exited || s->status != code << 8) {
            c->counts[UNMATCHED]++;
            return 0;
        }
        s->exited = 0;
        c->counts[CONFIRMED_EXITS]++;
        kind = CONFIRMED_EXIT;
    } else {
        if (g[2].n != 3 || memcmp(g[2].p, "yes", 3) != 0 || !span_u32(g[3], &child) || child == 0)
            return 0; /* failed, or a return value that is not a pid */
        if (kind == CONF_CLONE && (a0 & (F_CLONE_THREAD | F_CLONE_PARENT)))
            return 0;
        s = &c->slot[child & (CONF_SLOTS - 1)];
        if (s->pid != child || !s->forked || s->ppid != pid) {
            c->counts[UNMATCHED]++;
            return 0;
        }
        s->forked = 0;
        c->counts[CONFIRMED_FORKS]++;
        kind = CONFIRMED_FORK;
    }
    PyObject *items[7] = {
        PyLong_FromLong(kind),
        PyLong_FromUnsignedLong(kind == CONFIRMED_FORK ? child : pid),
        PyLong_FromUnsignedLong(kind == CONFIRMED_FORK ? pid : 0),
        PyLong_FromUnsignedLong(uid),
        PyLong_FromUnsignedLong(code),
        PyFloat_FromDouble(stamp),
        PyLong_FromUnsignedLong(sn),
    };
    PyObject *ev = new_tuple(c->cls, items, 7);
    if (ev == NULL)
        return -1;
    int rc = PyList_Append(out, ev);
    Py_DECREF(ev);
    if (rc < 0)
        return -1;
    c->ring_serial[c->ring_at] = sn;
    c->ring_ms[c->ring_at] = stamp_ms(stamp);
    c->ring_used[c->ring_at] = 1;
    c->ring_at = (c->ring_at + 1) % CONF_RING;
    return 1;
}

/* An EOE record (after nlmsghdr): 1 when it ends an event confirmed above (its serial is
 * remembered; forgotten now), 0 when it goes to the assembler, -1 on error. */
static int
conf_eoe(Confirmations *c, const char *p, const char *end)
{
    double stamp;
    uint32_t sn;
    const char *body, *bend;
    int head = conf_head(p, end, &stamp, &sn, &body, &bend);
    if (head <= 0 || bend != body) /* an EOE has no body */
        return head < 0 ? -1 : 0;
    uint32_t ms = stamp_ms(stamp);
    for (int k = 1; k <= CONF_RING; k++) { /* the newest first */
        int i = (c->ring_at - k + CONF_RING) % CONF_RING;
        if (c->ring_used[i] && c->ring_serial[i] == sn && c->ring_ms[i] == ms) {
            c->ring_used[i] = 0;
            c->counts[EOES_DROPPED]++;
            return 1;
        }
    }
    return 0;
}

static int
conf_call_of(PyObject *item, conf_call *k)
{
    const char *arch, *nr;
    Py_ssize_t an, nn;
    int kind;
    if (!PyTuple_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "calls: (arch, nr, kind) tuples are wanted");
        return -1;
    }
    if (!PyArg_ParseTuple(item, "y#y#i", &arch, &an, &nr, &nn, &kind))
        return -1;
    if (an < 1 || an > 16 || nn < 1 || nn > 16 || kind < CONF_CLONE || kind > CONF_EXIT) {
        PyErr_SetString(PyExc_ValueError, "calls: (arch, nr, kind) with 1-16 bytes, kind 1-3");
        return -1;
    }
    memcpy(k->arch, arch, (size_t)an);
    memcpy(k->nr, nr, (size_t)nn);
    k->arch_n = an;
    k->nr_n = nn;
    k->kind = kind;
    return 0;
}

static PyObject *
conf_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *cls, *calls;
    static char *kwlist[] = {"confirmed", "calls", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &cls, &calls))
        return NULL;
    if (plain_tuple_type(cls, 7) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(calls, "calls: a sequence of (arch, nr, kind)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > CONF_CALLS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many calls");
        return NULL;
    }
    Confirmations *c = (Confirmations *)type->tp_alloc(type, 0); /* zeroed */
    if (c == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (conf_call_of(PySequence_Fast_GET_ITEM(seq, i), &c->calls[i]) < 0) {
            Py_DECREF(seq);
            Py_DECREF(c);
            return NULL;
        }
    }
    Py_DECREF(seq);
    c->ncalls = (int)n;
    Py_INCREF(cls);
    c->cls = (PyTypeObject *)cls;
    return (PyObject *)c;
}

static void
conf_dealloc(PyObject *self)
{
    Py_XDECREF(((Confirmations *)self)->cls);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *
conf_counters(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    Confirmations *c = (Confirmations *)self;
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i <= NCOUNTS; i++) {
        unsigned long long n = i < NCOUNTS ? c->counts[i] : c->clears;
        PyObject *v = PyLong_FromUnsignedLongLong(n);
        if (v == NULL || PyDict_SetItemString(d, i < NCOUNTS ? count_names[i] : "clears", v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* Forget every entry: after a loss by either source, or when the connector stops, an entry
 * may stand for a life the other reports do not (its own FORK of a reused pid lost). */
static PyObject *
conf_clear(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    Confirmations *c = (Confirmations *)self;
    memset(c->slot, 0, sizeof c->slot);
    c->clears++;
    Py_RETURN_NONE;
}

static PyMethodDef conf_methods[] = {
    {"counters", conf_counters, METH_NOARGS, "The table's counters, as a dict."},
    {"clear", conf_clear, METH_NOARGS, "Forget every entry (after a loss; when stopped)."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(conf_doc,
"Confirmations(confirmed, calls)\n\n"
"The connector's forks and exits by pid, for audit's reports of them. `confirmed`: the\n"
"NamedTuple class made for a match (7 fields); `calls`: (arch, nr, kind) as a SYSCALL\n"
"record writes them (hex arch, decimal nr), kind 1 clone, 2 another fork, 3 exit_group.");

static PyTypeObject confirmations_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "app.netlink._batch.Confirmations",
    .tp_basicsize = sizeof(Confirmations),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = conf_doc,
    .tp_new = conf_new,
    .tp_dealloc = conf_dealloc,
    .tp_methods = conf_methods,
};

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
    if (PyType_Ready(&confirmations_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&confirmations_type);
    if (PyModule_AddObject(m, "Confirmations", (PyObject *)&confirmations_type) < 0) {
        Py_DECREF(&confirmations_type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SLOTS", SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "DRAINED", DRAINED) < 0 ||
        PyModule_AddIntConstant(m, "BUDGET", BUDGET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
