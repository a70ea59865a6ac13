/* The fused classic-pcap loop of labctl's embedded sensor, compiled.
 *
 * A translation, step for step, of the Python loop in labctl/sensor/fastpath.py
 * (walk_py), which stays the reference: the same fields, the same byte-swapped flow
 * keys, the same objects touched in the same order, and the same calls back into the
 * engine (process, parse, the flow tick and touch, the rule repeat check, _attempt). New SYN
 * flows are made here as Sensor._syn_flow makes them (evicting as Sensor._evict does).
 * Tests compare this loop, the Python loop and the generic path packet for packet.
 *
 * Built on first use by labctl/sensor/native.py with the machine's C compiler; without one
 * the Python loop runs. Little-endian pcap only (the caller checks).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* A tuple key's hash is not kept by the tuple: a key looked up and then stored is hashed
 * once where CPython exports the known-hash calls (3.8 to 3.12), twice elsewhere. */
#if PY_VERSION_HEX >= 0x03080000 && PY_VERSION_HEX < 0x030D0000
#define DICT_GET_H(d, k, h) _PyDict_GetItem_KnownHash((d), (k), (h))
#define DICT_SET_H(d, k, v, h) _PyDict_SetItem_KnownHash((d), (k), (v), (h))
#else
#define DICT_GET_H(d, k, h) ((void)(h), PyDict_GetItemWithError((d), (k)))
#define DICT_SET_H(d, k, v, h) ((void)(h), PyDict_SetItem((d), (k), (v)))
#endif

static PyObject *s_flow_tick, *s_append, *s_fminute, *s_next_flow, *s_flows, *s_dirty_flows;
static PyObject *s_dirty_devices, *s_evicted_flows, *s_flow_max, *s_last_seen, *s_id;
static PyObject *s_unseen_flows;
static PyObject *s_lru;

/* the port numbers as int objects, made once (a port above 256 is not a cached small int) */
static PyObject *port_objs[65536];

static inline PyObject *port_obj(unsigned v) {
    PyObject *o = port_objs[v & 0xFFFF];
    if (o == NULL) {
        o = PyLong_FromLong((long)(v & 0xFFFF));
        if (o == NULL)
            return NULL;
        port_objs[v & 0xFFFF] = o;
    }
    Py_INCREF(o);
    return o;
}

/* FlowRecord's slots, in this order (labctl/sensor/records.py) */
enum { FR_ID, FR_SEQ, FR_SPORT, FR_DPORT, FR_FIRST, FR_OUT, FR_INN, FR_MINUTES, FR_KEY,
       FR_STORED, FR_PREV, FR_NXT, FR_N };
static const char *fr_names[FR_N] = {"id", "seq", "sport", "dport", "first", "out", "inn",
                                     "minutes", "key", "stored", "prev", "nxt"};

static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* a network-order 16-bit field read little-endian, as the Python loop's struct reads it */
static inline unsigned rd16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }

static inline unsigned swap16(unsigned v) { return ((v & 0xFF) << 8) | (v >> 8); }

typedef struct {
    PyObject *sensor, *tick, *touch, *settled, *process, *parse, *new_flow;
    PyObject *fd, *tcp_rules, *udp_rules, *dms, *dirty;
    PyObject *flow_tick; /* owned: the sensor's (lo, hi, stamp) tuple */
    double flo, fhi;
    PyObject *fstamp; /* borrowed from flow_tick */
    /* the flow store, for new SYN flows made here (flow_type NULL: new_flow is called) */
    PyTypeObject *flow_type;
    Py_ssize_t fr_off[FR_N];
    PyObject *fminute, *flows, *dirty_flows, *dirty_devices, *evicted, *unseen; /* owned */
    PyObject *lru; /* owned: the sentinel of the flows' least-recently-seen ring */
    Py_ssize_t flow_max;
    /* sensor._next_flow, counted here between calls back into Python (owned) */
    PyObject *next_id;
    int next_dirty;
    /* the last-seen time evicted flows carry to their device, held here while the evictions
     * are of one device (ls_dev and ls_last owned, ls_dev NULL: none held) */
    PyObject *ls_dev, *ls_last;
    /* a window queue's append (a method descriptor of its type, owned) */
    PyTypeObject *q_type;
    PyObject *q_append;
    /* the addresses and address prefixes seen lately, as bytes (owned): one object per
     * address, its hash computed once */
    struct { uint32_t v; PyObject *o; } addr[1024], pre[256];
} W;

static inline uint32_t rd32be(const unsigned char *p, Py_ssize_t n) {
    uint32_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* p[:4] as bytes, from the table when seen lately (a new reference) */
static PyObject *addr_obj(W *w, const unsigned char *p) {
    uint32_t v = rd32be(p, 4);
    unsigned i = (v * 2654435761u) >> 22;
    if (w->addr[i].o != NULL && w->addr[i].v == v) {
        Py_INCREF(w->addr[i].o);
        return w->addr[i].o;
    }
    PyObject *o = PyBytes_FromStringAndSize((const char *)p, 4);
    if (o == NULL)
        return NULL;
    Py_INCREF(o);
    Py_XSETREF(w->addr[i].o, o);
    w->addr[i].v = v;
    return o;
}

/* p[:n] (n < 4) likewise */
static PyObject *prefix_obj(W *w, const unsigned char *p, Py_ssize_t n) {
    uint32_t v = rd32be(p, n);
    unsigned i = (v * 2654435761u) >> 24;
    if (w->pre[i].o != NULL && w->pre[i].v == v) {
        Py_INCREF(w->pre[i].o);
        return w->pre[i].o;
    }
    PyObject *o = PyBytes_FromStringAndSize((const char *)p, n);
    if (o == NULL)
        return NULL;
    Py_INCREF(o);
    Py_XSETREF(w->pre[i].o, o);
    w->pre[i].v = v;
    return o;
}

/* write the counted sensor._next_flow back before Python code runs */
/* Device.last_seen = max(it, last), marking the device dirty when it changes (as
 * Sensor._evict does) */
static int carry_last(W *w, PyObject *dev, PyObject *last) {
    PyObject *seen = PyObject_GetAttr(dev, s_last_seen);
    int later = seen == NULL ? -1
                : (PyFloat_CheckExact(last) && PyFloat_CheckExact(seen))
                      ? PyFloat_AS_DOUBLE(last) > PyFloat_AS_DOUBLE(seen)
                      : PyObject_RichCompareBool(last, seen, Py_GT);
    Py_XDECREF(seen);
    if (later > 0) {
        PyObject *id = PyObject_GetAttr(dev, s_id);
        later = (id && PyObject_SetAttr(dev, s_last_seen, last) == 0 &&
                 PySet_Add(w->dirty_devices, id) == 0) ? 0 : -1;
        Py_XDECREF(id);
    }
    return later < 0 ? -1 : 0;
}

/* the device last-seen time held, carried to it */
static int flush_last(W *w) {
    if (w->ls_dev == NULL)
        return 0;
    PyObject *dev = w->ls_dev, *last = w->ls_last;
    w->ls_dev = w->ls_last = NULL;
    int r = carry_last(w, dev, last);
    Py_DECREF(dev);
    Py_DECREF(last);
    return r;
}

/* what the loop holds back from the sensor (the next flow id, a device's last-seen time),
 * written to it: before any Python code runs, and at the end */
static int flush_held(W *w) {
    if (flush_last(w) < 0)
        return -1;
    if (!w->next_dirty)
        return 0;
    w->next_dirty = 0;
    return PyObject_SetAttr(w->sensor, s_next_flow, w->next_id);
}

static int q_append(W *w, PyObject *q, PyObject *tsf) {
    if (Py_TYPE(q) != w->q_type) {
        PyObject *m = PyObject_GetAttr((PyObject *)Py_TYPE(q), s_append);
        if (m == NULL)
            return -1;
        Py_XSETREF(w->q_append, m);
        w->q_type = Py_TYPE(q);
    }
    PyObject *args[2] = {q, tsf};
    PyObject *r = PyObject_Vectorcall(w->q_append, args, 2, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static void w_clear(W *w) {
    for (int i = 0; i < 1024; i++)
        Py_CLEAR(w->addr[i].o);
    for (int i = 0; i < 256; i++)
        Py_CLEAR(w->pre[i].o);
    Py_CLEAR(w->q_append);
    Py_CLEAR(w->next_id);
    Py_CLEAR(w->flow_tick);
    Py_CLEAR(w->fminute);
    Py_CLEAR(w->flows);
    Py_CLEAR(w->dirty_flows);
    Py_CLEAR(w->dirty_devices);
    Py_CLEAR(w->evicted);
    Py_CLEAR(w->unseen);
    Py_CLEAR(w->lru);
    Py_CLEAR(w->ls_dev);
    Py_CLEAR(w->ls_last);
}

static int reread_store(W *w) {
    PyObject **to[8] = {&w->fminute, &w->flows, &w->dirty_flows, &w->dirty_devices, &w->evicted,
                        &w->next_id, &w->unseen, &w->lru};
    PyObject *names[8] = {s_fminute, s_flows, s_dirty_flows, s_dirty_devices, s_evicted_flows,
                          s_next_flow, s_unseen_flows, s_lru};
    w->next_dirty = 0;
    for (int i = 0; i < 8; i++) {
        PyObject *o = PyObject_GetAttr(w->sensor, names[i]);
        if (o == NULL)
            return -1;
        Py_XSETREF(*to[i], o);
    }
    if (!PyDict_CheckExact(w->flows) || !PyDict_CheckExact(w->dirty_flows) ||
        !PyAnySet_Check(w->dirty_devices) || !PyList_Check(w->evicted) ||
        !PyDict_CheckExact(w->unseen)) {
        PyErr_SetString(PyExc_TypeError, "the sensor's flow store has unexpected types");
        return -1;
    }
    return 0;
}

/* the member offsets of FlowRecord's slots, found once per class (the class is kept) */
static PyObject *fr_name_objs[FR_N];
static PyTypeObject *layout_type;
static Py_ssize_t layout_off[FR_N];

/* 1 when the class is FlowRecord as expected (slots of objects), else 0 */
static int flow_layout(W *w, PyObject *cls) {
    if (!PyType_Check(cls))
        return 0;
    if ((PyTypeObject *)cls != layout_type) {
        Py_ssize_t off[FR_N];
        for (int i = 0; i < FR_N; i++) {
            PyObject *descr = _PyType_Lookup((PyTypeObject *)cls, fr_name_objs[i]); /* borrowed */
            if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
                ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX)
                return 0;
            off[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_INCREF(cls);
        Py_XSETREF(layout_type, (PyTypeObject *)cls);
        memcpy(layout_off, off, sizeof off);
    }
    memcpy(w->fr_off, layout_off, sizeof layout_off);
    w->flow_type = (PyTypeObject *)cls;
    return 1;
}

static inline PyObject *fr_get(W *w, PyObject *f, int i) {
    return *(PyObject **)((char *)f + w->fr_off[i]);
}

/* a slot of a new record: steals v */
static inline void fr_set(W *w, PyObject *f, int i, PyObject *v) {
    PyObject **slot = (PyObject **)((char *)f + w->fr_off[i]);
    Py_XSETREF(*slot, v);
}

static int reread_store(W *w);

static int reread_tick(W *w) {
    PyObject *t = PyObject_GetAttr(w->sensor, s_flow_tick);
    if (t == NULL)
        return -1;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_TypeError, "sensor.flow_tick is not a (lo, hi, stamp) tuple");
        return -1;
    }
    double lo = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 0));
    double hi = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 1));
    if (PyErr_Occurred()) {
        Py_DECREF(t);
        return -1;
    }
    Py_XSETREF(w->flow_tick, t);
    w->flo = lo;
    w->fhi = hi;
    w->fstamp = PyTuple_GET_ITEM(t, 2);
    return w->flow_type ? reread_store(w) : 0;
}

static int maybe_tick(W *w, double ts, PyObject *tsf) {
    if (ts >= w->fhi || ts < w->flo) {
        if (flush_held(w) < 0)
            return -1;
        PyObject *r = PyObject_CallOneArg(w->tick, tsf);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return reread_tick(w);
    }
    return 0;
}

static int add_at(PyObject *d, Py_ssize_t i, long long v) {
    PyObject *o = PyList_GET_ITEM(d, i), *n;
    int overflow = 1;
    long long x = 0;
    if (PyLong_CheckExact(o))
        x = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (!overflow && x < LLONG_MAX - v) {
        n = PyLong_FromLongLong(x + v);
    } else {
        PyObject *vo = PyLong_FromLongLong(v);
        if (vo == NULL)
            return -1;
        n = PyNumber_Add(o, vo);
        Py_DECREF(vo);
    }
    if (n == NULL)
        return -1;
    PyList_SetItem(d, i, n); /* steals n */
    return 0;
}

static int check_dir(PyObject *d) {
    if (!PyList_Check(d) || PyList_GET_SIZE(d) < 8) {
        PyErr_SetString(PyExc_TypeError, "a flow direction is not a list of 8 or more");
        return -1;
    }
    return 0;
}

/* d[0] += 1; d[1] += wire; d[2] = ts; touch(d) when its stamp is not the minute's */
static int bump(W *w, PyObject *d, long long wire, PyObject *tsf) {
    if (add_at(d, 0, 1) < 0 || add_at(d, 1, wire) < 0)
        return -1;
    Py_INCREF(tsf);
    PyList_SetItem(d, 2, tsf);
    if (PyList_GET_ITEM(d, 3) != w->fstamp) {
        if (flush_held(w) < 0)
            return -1;
        PyObject *r = PyObject_CallOneArg(w->touch, d);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* 1: a rule-port packet whose rules all alerted within the dedup window (counted by the
 * Python helper); 0: the slow way; -1: error */
static int settled(W *w, PyObject *d, double ts) {
    if (flush_held(w) < 0)
        return -1;
    PyObject *ms = PyLong_FromLongLong((long long)(ts * 1000.0));
    if (ms == NULL)
        return -1;
    PyObject *args[4] = {PyList_GET_ITEM(d, 7), ms, w->dms, w->dirty};
    PyObject *r = PyObject_Vectorcall(w->settled, args, 4, NULL);
    Py_DECREF(ms);
    if (r == NULL)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

static int in_set(PyObject *set, unsigned port) {
    if (PySet_GET_SIZE(set) == 0)
        return 0;
    PyObject *o = port_obj(port);
    if (o == NULL)
        return -1;
    int c = PySet_Contains(set, o);
    Py_DECREF(o);
    return c;
}

/* a packet of a known flow direction: counted (1), unless its port has a rule whose alert
 * is not a repeat within the dedup window (0: the slow way); -1 error */
static int known_flow(W *w, PyObject *key, PyObject *rules, unsigned dport, double ts,
                      PyObject *tsf, uint32_t orig) {
    PyObject *d = PyDict_GetItemWithError(w->fd, key);
    if (d == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(d); /* a tick may evict its flow */
    int c = check_dir(d) < 0 ? -1 : in_set(rules, dport);
    if (c > 0)
        c = settled(w, d, ts) == 1 ? 0 : (PyErr_Occurred() ? -1 : 1);
    int r = c < 0 ? -1 : c ? 0
            : (maybe_tick(w, ts, tsf) < 0 || bump(w, d, orig, tsf) < 0) ? -1 : 1;
    Py_DECREF(d);
    return r;
}

static PyObject *mkkey(PyObject *a, PyObject *b, unsigned sp, unsigned dp, int proto, long vl) {
    PyObject *k = PyTuple_New(6);
    if (k == NULL)
        return NULL;
    PyObject *o2 = port_obj(sp), *o3 = port_obj(dp);
    PyObject *o4 = PyLong_FromLong(proto), *o5 = PyLong_FromLong(vl);
    if (!o2 || !o3 || !o4 || !o5) {
        Py_XDECREF(o2); Py_XDECREF(o3); Py_XDECREF(o4); Py_XDECREF(o5);
        Py_DECREF(k);
        return NULL;
    }
    Py_INCREF(a);
    Py_INCREF(b);
    PyTuple_SET_ITEM(k, 0, a);
    PyTuple_SET_ITEM(k, 1, b);
    PyTuple_SET_ITEM(k, 2, o2);
    PyTuple_SET_ITEM(k, 3, o3);
    PyTuple_SET_ITEM(k, 4, o4);
    PyTuple_SET_ITEM(k, 5, o5);
    /* bytes and ints only: it can be in no reference cycle, so the collector need not
     * walk it (as Python's own tuples are untracked once the collector sees them) */
    PyObject_GC_UnTrack(k);
    return k;
}

static Py_ssize_t size_of(PyObject *o) {
    return PyDict_CheckExact(o) ? PyDict_GET_SIZE(o) : PyObject_Length(o);
}

/* items = keys.get(k); settle when len(items) < room, storing items[item] = ts.
 * 1 stored, 0 not, -1 error */
static int window_store(PyObject *keys, PyObject *k, Py_ssize_t room, PyObject *item,
                        PyObject *tsf) {
    PyObject *items = PyDict_GetItemWithError(keys, k);
    if (items == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t n = size_of(items);
    if (n < 0)
        return -1;
    if (n >= room)
        return 0;
    return PyObject_SetItem(items, item, tsf) < 0 ? -1 : 1;
}

/* q = keys.get(k) when len(q) < room (a new reference), else NULL with *ok = 0 */
static PyObject *rate_queue(PyObject *keys, PyObject *k, Py_ssize_t room, int *ok) {
    PyObject *q = PyDict_GetItemWithError(keys, k);
    if (q == NULL) {
        *ok = PyErr_Occurred() ? -1 : 0;
        return NULL;
    }
    Py_ssize_t n = size_of(q);
    if (n < 0) {
        *ok = -1;
        return NULL;
    }
    if (n >= room) {
        *ok = 0;
        return NULL;
    }
    Py_INCREF(q);
    return q;
}

static PyObject *call_process(W *w, PyObject *p, PyObject *tsf, uint32_t orig, PyObject *key) {
    if (flush_held(w) < 0)
        return NULL;
    PyObject *wire = PyLong_FromUnsignedLong(orig);
    if (wire == NULL)
        return NULL;
    PyObject *args[4] = {p, tsf, wire, key};
    PyObject *r = PyObject_Vectorcall(w->process, args, key ? 4 : 3, NULL);
    Py_DECREF(wire);
    return r;
}

/* the parse tuple of an IPv4 TCP/UDP frame whose fields are read already */
static PyObject *parse_tuple(const unsigned char *frame, long vl, PyObject *kipv4, PyObject *sip,
                             PyObject *dip, int proto, unsigned sport, unsigned dport,
                             unsigned flags) {
    return Py_BuildValue("(ly#y#OOOiIII)", vl, (const char *)frame + 6, (Py_ssize_t)6,
                         (const char *)frame, (Py_ssize_t)6, kipv4, sip, dip, proto,
                         swap16(sport), swap16(dport), flags);
}

/* one direction of an evicted flow: drop its key, carry its last time to its device */
static int evict_dir(W *w, PyObject *d, PyObject *key) {
    if (check_dir(d) < 0)
        return -1;
    int used = PyObject_IsTrue(PyList_GET_ITEM(d, 0));
    if (used < 0)
        return -1;
    if (used) {
        if (PyDict_DelItem(w->fd, key) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError))
                return -1;
            PyErr_Clear();
        }
        PyObject *dev = PyList_GET_ITEM(d, 8), *last = PyList_GET_ITEM(d, 2);
        if (dev != Py_None && dev == w->ls_dev && PyFloat_CheckExact(last)) {
            /* the device held already: keep the later time */
            if (PyFloat_AS_DOUBLE(last) > PyFloat_AS_DOUBLE(w->ls_last)) {
                Py_INCREF(last);
                Py_SETREF(w->ls_last, last);
            }
        } else if (dev != Py_None) {
            Py_INCREF(dev);
            Py_INCREF(last);
            int r = flush_last(w);
            if (r == 0 && PyFloat_CheckExact(last)) {
                w->ls_dev = dev; /* held until flush_last (references passed on) */
                w->ls_last = last;
            } else {
                if (r == 0)
                    r = carry_last(w, dev, last);
                Py_DECREF(dev);
                Py_DECREF(last);
            }
            if (r < 0)
                return -1;
        }
    }
    Py_INCREF(Py_None);
    PyList_SetItem(d, 4, Py_None); /* no reference cycle left */
    return 0;
}

/* records.lru_unlink(f) */
static int lru_unlink(W *w, PyObject *f) {
    PyObject *p = fr_get(w, f, FR_PREV), *n = fr_get(w, f, FR_NXT);
    if (!p || !n || !Py_IS_TYPE(p, w->flow_type) || !Py_IS_TYPE(n, w->flow_type)) {
        PyErr_SetString(PyExc_TypeError, "a flow is not in the flows' ring");
        return -1;
    }
    /* (the caller holds f: its neighbours let go of it here) */
    Py_INCREF(n);
    fr_set(w, p, FR_NXT, n);
    Py_INCREF(p);
    fr_set(w, n, FR_PREV, p);
    Py_INCREF(Py_None);
    fr_set(w, f, FR_PREV, Py_None);
    Py_INCREF(Py_None);
    fr_set(w, f, FR_NXT, Py_None);
    return 0;
}

/* records.lru_append(ring, f): f (in no ring) the most recently seen */
static void lru_append(W *w, PyObject *f) {
    PyObject *ring = w->lru, *tail = fr_get(w, ring, FR_PREV); /* checked: a record */
    Py_INCREF(tail);
    fr_set(w, f, FR_PREV, tail);
    Py_INCREF(ring);
    fr_set(w, f, FR_NXT, ring);
    Py_INCREF(f);
    fr_set(w, tail, FR_NXT, f);
    Py_INCREF(f);
    fr_set(w, ring, FR_PREV, f);
}

/* the rest of Sensor._evict(f), f out of the store already */
static int evict_rest(W *w, PyObject *f, PyObject *key, PyObject *out, PyObject *inn,
                      PyObject *id) {
    if (evict_dir(w, out, key) < 0)
        return -1;
    if (PyDict_GET_SIZE(w->unseen) && PyDict_DelItem(w->unseen, key) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return -1;
        PyErr_Clear();
    }
    if (check_dir(inn) < 0)
        return -1;
    int used = PyObject_IsTrue(PyList_GET_ITEM(inn, 0));
    if (used < 0)
        return -1;
    /* (the reverse key is made only when the in direction had packets: in flow_dirs) */
    PyObject *rk = !used ? NULL
                   : PyTuple_Pack(6, PyTuple_GET_ITEM(key, 1), PyTuple_GET_ITEM(key, 0),
                                  PyTuple_GET_ITEM(key, 3), PyTuple_GET_ITEM(key, 2),
                                  PyTuple_GET_ITEM(key, 4), PyTuple_GET_ITEM(key, 5));
    if (used && rk == NULL)
        return -1;
    int r = evict_dir(w, inn, rk);
    Py_XDECREF(rk);
    if (r < 0)
        return -1;
    if (PyDict_DelItem(w->dirty_flows, id) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return -1;
        PyErr_Clear();
    }
    PyObject *stored = fr_get(w, f, FR_STORED);
    int st = stored ? PyObject_IsTrue(stored) : 0;
    if (st < 0 || (st && PyList_Append(w->evicted, id) < 0))
        return -1;
    return 0;
}

/* Sensor._evict(f); the caller holds a reference to f */
static int evict(W *w, PyObject *f) {
    PyObject *key = fr_get(w, f, FR_KEY), *out = fr_get(w, f, FR_OUT);
    PyObject *inn = fr_get(w, f, FR_INN), *id = fr_get(w, f, FR_ID);
    if (!key || !out || !inn || !id || !PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 6) {
        PyErr_SetString(PyExc_TypeError, "an evicted flow is not a complete FlowRecord");
        return -1;
    }
    Py_INCREF(key); Py_INCREF(out); Py_INCREF(inn); Py_INCREF(id);
    int e = PyDict_DelItem(w->flows, id) < 0 || lru_unlink(w, f) < 0 ? -1 : 0;
    if (e == 0)
        e = evict_rest(w, f, key, out, inn, id);
    Py_DECREF(key); Py_DECREF(out); Py_DECREF(inn); Py_DECREF(id);
    return e;
}
/* 0.0, shared by every new direction (as FlowRecord.__init__'s constant is) */
static PyObject *fzero;

static PyObject *new_dir(PyObject *f) {
    PyObject *d = PyList_New(9);
    if (d == NULL)
        return NULL;
    PyObject *zero = PyLong_FromLong(0); /* a cached small int */
    PyObject *v[9] = {zero, zero, fzero, Py_None, f, Py_None, zero, Py_None, Py_None};
    for (int i = 0; i < 9; i++) {
        Py_INCREF(v[i]);
        PyList_SET_ITEM(d, i, v[i]);
    }
    Py_DECREF(zero);
    return d;
}

/* Sensor._syn_flow(key, ts, dev): a new flow opened by a SYN whose direction and reverse
 * are both unknown; returns its out direction (a new reference) */
static PyObject *syn_flow(W *w, PyObject *key, Py_hash_t kh, PyObject *tsf, PyObject *dev,
                          unsigned sport, unsigned dport) {
    PyObject *ring = w->lru, *oldest = NULL;
    if (!Py_IS_TYPE(ring, w->flow_type) || !fr_get(w, ring, FR_PREV) ||
        !Py_IS_TYPE(fr_get(w, ring, FR_PREV), w->flow_type) ||
        !(oldest = fr_get(w, ring, FR_NXT)) || !Py_IS_TYPE(oldest, w->flow_type)) {
        PyErr_SetString(PyExc_TypeError, "the flow store holds something else");
        return NULL;
    }
    if (PyDict_GET_SIZE(w->flows) >= w->flow_max) {
        if (oldest == ring) {
            PyErr_SetString(PyExc_TypeError, "the flows' ring is empty but the store full");
            return NULL;
        }
        Py_INCREF(oldest);
        int r = evict(w, oldest);
        Py_DECREF(oldest);
        if (r < 0)
            return NULL;
    }
    PyObject *id = w->next_id;
    Py_INCREF(id);
    PyObject *one = PyLong_FromLong(1);
    PyObject *next = one ? PyNumber_Add(id, one) : NULL;
    Py_XDECREF(one);
    if (next == NULL) {
        Py_DECREF(id);
        return NULL;
    }
    Py_SETREF(w->next_id, next);
    w->next_dirty = 1;
    int r;
    PyObject *f = w->flow_type->tp_alloc(w->flow_type, 0);
    if (f == NULL) {
        Py_DECREF(id);
        return NULL;
    }
    PyObject *out = new_dir(f), *inn = new_dir(f);
    PyObject *sp = port_obj(swap16(sport)), *dp = port_obj(swap16(dport));
    PyObject *seq = PyLong_FromLong(0);
    if (!out || !inn || !sp || !dp || !seq) {
        Py_XDECREF(out); Py_XDECREF(inn); Py_XDECREF(sp); Py_XDECREF(dp); Py_XDECREF(seq);
        Py_DECREF(id);
        Py_DECREF(f);
        return NULL;
    }
    Py_INCREF(id);
    fr_set(w, f, FR_ID, id);
    fr_set(w, f, FR_SEQ, seq);
    Py_INCREF(key);
    fr_set(w, f, FR_KEY, key);
    fr_set(w, f, FR_SPORT, sp);
    fr_set(w, f, FR_DPORT, dp);
    Py_INCREF(tsf);
    fr_set(w, f, FR_FIRST, tsf);
    Py_INCREF(out);
    fr_set(w, f, FR_OUT, out);
    fr_set(w, f, FR_INN, inn);
    Py_INCREF(Py_None);
    fr_set(w, f, FR_MINUTES, Py_None);
    Py_INCREF(Py_False);
    fr_set(w, f, FR_STORED, Py_False);
    r = PyDict_SetItem(w->flows, id, f);
    if (r == 0) {
        lru_append(w, f);
        r = PyDict_SetItem(w->dirty_flows, id, f);
    }
    Py_DECREF(id);
    Py_DECREF(f); /* held by the store now (or freed on error) */
    if (r < 0) {
        Py_DECREF(out);
        return NULL;
    }
    Py_INCREF(w->fminute);
    PyList_SetItem(out, 5, w->fminute);
    Py_INCREF(w->fstamp);
    PyList_SetItem(out, 3, w->fstamp);
    PyObject *owner = dev == Py_False ? Py_None : dev;
    Py_INCREF(owner);
    PyList_SetItem(out, 8, owner);
    if (DICT_SET_H(w->fd, key, out, kh) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *walk(PyObject *self, PyObject *const *a, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 20) {
        PyErr_SetString(PyExc_TypeError, "walk() takes 20 arguments");
        return NULL;
    }
    PyObject *data = a[0];
    Py_ssize_t off = PyLong_AsSsize_t(a[1]);
    Py_ssize_t limit = PyLong_AsSsize_t(a[2]);
    double div = PyFloat_AsDouble(a[3]);
    Py_ssize_t maxrec = PyLong_AsSsize_t(a[17]);
    Py_ssize_t every = PyLong_AsSsize_t(a[18]);
    double ts = PyFloat_AsDouble(a[19]);
    if (PyErr_Occurred())
        return NULL;
    W w = {0};
    w.sensor = a[4];
    w.fd = a[5];
    w.tcp_rules = a[6];
    w.udp_rules = a[7];
    w.dms = a[8];
    w.dirty = a[9];
    w.tick = a[10];
    w.touch = a[11];
    w.settled = a[12];
    w.process = a[13];
    w.parse = a[14];
    PyObject *release = a[15];
    PyObject *st = a[16];
    if (!PyDict_CheckExact(w.fd) || !PyAnySet_Check(w.tcp_rules) ||
        !PyAnySet_Check(w.udp_rules) || !PyTuple_Check(st) || PyTuple_GET_SIZE(st) != 17) {
        PyErr_SetString(PyExc_TypeError, "walk(): flow_dirs, rule sets or syn state");
        return NULL;
    }
    /* syn_state(): by_ip, port0, ps_keys, ps_room, as_keys, as_room, nb, ss_keys, ss_room,
     * dos_keys, dos_room, internet, glob, new_flow; then K_IPV4 (appended by the caller) */
    PyObject *by_ip = PyTuple_GET_ITEM(st, 0);
    int port0 = PyObject_IsTrue(PyTuple_GET_ITEM(st, 1));
    PyObject *ps_keys = PyTuple_GET_ITEM(st, 2);
    Py_ssize_t ps_room = PyLong_AsSsize_t(PyTuple_GET_ITEM(st, 3));
    PyObject *as_keys = PyTuple_GET_ITEM(st, 4);
    Py_ssize_t as_room = PyLong_AsSsize_t(PyTuple_GET_ITEM(st, 5));
    Py_ssize_t nb = PyLong_AsSsize_t(PyTuple_GET_ITEM(st, 6));
    PyObject *ss_keys = PyTuple_GET_ITEM(st, 7);
    Py_ssize_t ss_room = PyLong_AsSsize_t(PyTuple_GET_ITEM(st, 8));
    PyObject *dos_keys = PyTuple_GET_ITEM(st, 9);
    Py_ssize_t dos_room = PyLong_AsSsize_t(PyTuple_GET_ITEM(st, 10));
    int internet = PyObject_IsTrue(PyTuple_GET_ITEM(st, 11));
    PyObject *glob = PyTuple_GET_ITEM(st, 12);
    w.new_flow = PyTuple_GET_ITEM(st, 13);
    PyObject *kipv4 = PyTuple_GET_ITEM(st, 14);
    PyObject *attempt = PyTuple_GET_ITEM(st, 16);
    if (PyErr_Occurred() || port0 < 0 || internet < 0)
        return NULL;
    /* new SYN flows are made here when FlowRecord is as expected, else by new_flow */
    if (flow_layout(&w, PyTuple_GET_ITEM(st, 15))) {
        PyObject *fm = PyObject_GetAttr(w.sensor, s_flow_max);
        w.flow_max = fm ? PyLong_AsSsize_t(fm) : -1;
        Py_XDECREF(fm);
        if (w.flow_max == -1 && PyErr_Occurred())
            return NULL;
    }
    if (!PyDict_Check(by_ip) || !PyDict_Check(glob) ||
        (ps_keys != Py_None && !PyDict_Check(ps_keys)) ||
        (as_keys != Py_None && !PyDict_Check(as_keys)) ||
        (ss_keys != Py_None && !PyDict_Check(ss_keys)) ||
        (dos_keys != Py_None && !PyDict_Check(dos_keys))) {
        PyErr_SetString(PyExc_TypeError, "walk(): a window's keys are not a dict");
        return NULL;
    }
    if (nb > 4)
        nb = 4;
    if (nb < 0)
        nb = 0;

    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;
    if (limit > size - 68)
        limit = size - 68;
    if (reread_tick(&w) < 0) {
        w_clear(&w);
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t lim = off + every < limit ? off + every : limit;
    long long n = 0, slow = 0, bad = 0;
    PyObject *tsf = NULL, *sip = NULL, *dip = NULL, *key = NULL, *d = NULL, *p = NULL;
    PyObject *q1 = NULL, *q2 = NULL, *r = NULL;

    for (;;) {
        Py_CLEAR(tsf); Py_CLEAR(sip); Py_CLEAR(dip); Py_CLEAR(key); Py_CLEAR(d);
        Py_CLEAR(p); Py_CLEAR(q1); Py_CLEAR(q2);
        if (off > lim) {
            if (off > limit)
                break; /* the last few records: the reader walks them */
            PyObject *o = PyLong_FromSsize_t(off);
            if (o == NULL)
                goto error;
            r = flush_held(&w) < 0 ? NULL : PyObject_CallOneArg(release, o);
            Py_DECREF(o);
            if (r == NULL)
                goto error;
            Py_CLEAR(r);
            lim = off + every < limit ? off + every : limit;
            continue;
        }
        const unsigned char *rec = buf + off;
        uint32_t sec = rd32(rec), frac = rd32(rec + 4), incl = rd32(rec + 8);
        uint32_t orig = rd32(rec + 12);
        const unsigned char *fr = rec + 16; /* the frame */
        const unsigned char *h = fr;        /* where the untagged offsets start */
        unsigned etype = rd16(h + 12);
        Py_ssize_t hl = 14;
        long vl = 0;
        if (etype == 0x0081) { /* 802.1Q: the same fields 4 bytes further on */
            unsigned vid = rd16(fr + 14);
            h = fr + 4;
            etype = rd16(h + 12);
            hl = 18;
            vl = (long)(swap16(vid) & 0xFFF);
        }
        Py_ssize_t pk = off + 16;
        if ((Py_ssize_t)incl > maxrec || pk + (Py_ssize_t)incl > size)
            break; /* damage: the reader names it */
        off = pk + (Py_ssize_t)incl;
        n++;
        ts = (double)sec + (double)frac / div;
        tsf = PyFloat_FromDouble(ts);
        if (tsf == NULL)
            goto error;
        unsigned vihl = h[14], frag = rd16(h + 20), proto = h[23];
        if (etype == 0x0008 && vihl == 0x45 && (frag == 0 || frag == 0x0040)) {
            unsigned sport = rd16(h + 34), dport = rd16(h + 36), flags = h[47];
            int tcp = proto == 6 && incl >= hl + 34, udp = proto == 17 && incl >= hl + 28;
            if (tcp || udp) {
                if (udp)
                    flags = 0;
                sip = addr_obj(&w, h + 26);
                dip = addr_obj(&w, h + 30);
                if (!sip || !dip)
                    goto error;
                key = mkkey(sip, dip, sport, dport, (int)proto, vl);
                if (key == NULL)
                    goto error;
                if (udp || !(flags & 0x02)) {
                    int k = known_flow(&w, key, udp ? w.udp_rules : w.tcp_rules, dport, ts,
                                       tsf, orig);
                    if (k < 0)
                        goto error;
                    if (k)
                        continue;
                } else if ((flags & 0x12) == 0x02) {
                    int c = in_set(w.tcp_rules, dport);
                    if (c < 0)
                        goto error;
                    if (!c) {
                        /* a SYN: from a known source, its flow is counted here, and its
                         * windows too while each is below its threshold (else
                         * Sensor._attempt runs, as in process) */
                        PyObject *dev = PyDict_GetItemWithError(by_ip, sip);
                        if (dev == NULL && PyErr_Occurred())
                            goto error;
                        unsigned hp = swap16(dport);
                        int ok = dev != NULL && (hp || !port0);
                        Py_XINCREF(dev);
                        if (ok && ps_keys != Py_None) {
                            PyObject *wk = PyTuple_Pack(2, sip, dip);
                            PyObject *item = port_obj(hp);
                            int s = (wk && item) ? window_store(ps_keys, wk, ps_room, item, tsf)
                                                 : -1;
                            Py_XDECREF(wk);
                            Py_XDECREF(item);
                            if (s < 0) {
                                Py_XDECREF(dev);
                                goto error;
                            }
                            ok = s;
                        }
                        if (ok && as_keys != Py_None) {
                            PyObject *pre = nb >= 4 ? (Py_INCREF(dip), dip)
                                                    : prefix_obj(&w, h + 30, nb);
                            PyObject *ak = pre ? PyTuple_Pack(2, sip, pre) : NULL;
                            int s = ak ? window_store(as_keys, ak, as_room, dip, tsf) : -1;
                            Py_XDECREF(pre);
                            Py_XDECREF(ak);
                            if (s < 0) {
                                Py_XDECREF(dev);
                                goto error;
                            }
                            ok = s;
                        }
                        if (ok && ss_keys != Py_None) {
                            q1 = rate_queue(ss_keys, sip, ss_room, &ok);
                            if (ok < 0) {
                                Py_XDECREF(dev);
                                goto error;
                            }
                        }
                        if (ok && dos_keys != Py_None) {
                            q2 = rate_queue(dos_keys, dip, dos_room, &ok);
                            if (ok < 0) {
                                Py_XDECREF(dev);
                                goto error;
                            }
                        }
                        if (ok && internet) {
                            PyObject *g = PyDict_GetItemWithError(glob, dip);
                            if (g == NULL) {
                                if (PyErr_Occurred()) {
                                    Py_XDECREF(dev);
                                    goto error;
                                }
                                ok = 0;
                            } else {
                                int gt = PyObject_IsTrue(g);
                                int dt = gt > 0 ? PyObject_IsTrue(dev) : 0;
                                if (gt < 0 || dt < 0) {
                                    Py_XDECREF(dev);
                                    goto error;
                                }
                                if (gt && dt)
                                    ok = 0;
                            }
                        }
                        if (dev != NULL) {
                            if (maybe_tick(&w, ts, tsf) < 0) {
                                Py_DECREF(dev);
                                goto error;
                            }
                            Py_hash_t kh = PyObject_Hash(key);
                            d = kh == -1 ? NULL : DICT_GET_H(w.fd, key, kh);
                            if (d == NULL && PyErr_Occurred()) {
                                Py_DECREF(dev);
                                goto error;
                            }
                            Py_XINCREF(d);
                            if (d == NULL) {
                                /* (the other side's flow, when its direction is known, is
                                 * found the slow way) */
                                PyObject *rk = mkkey(dip, sip, dport, sport, 6, vl);
                                int known = rk ? PyDict_Contains(w.fd, rk) : -1;
                                Py_XDECREF(rk);
                                if (known < 0) {
                                    Py_DECREF(dev);
                                    goto error;
                                }
                                if (!known && w.flow_type) {
                                    d = syn_flow(&w, key, kh, tsf, dev, sport, dport);
                                    if (d == NULL) {
                                        Py_DECREF(dev);
                                        goto error;
                                    }
                                } else if (!known) {
                                    PyObject *args[3] = {key, tsf, dev};
                                    d = flush_held(&w) < 0 ? NULL
                                        : PyObject_Vectorcall(w.new_flow, args, 3, NULL);
                                    if (d == NULL) {
                                        Py_DECREF(dev);
                                        goto error;
                                    }
                                    if (d == Py_None)
                                        Py_CLEAR(d);
                                }
                            }
                            Py_DECREF(dev);
                            if (d != NULL) {
                                if (check_dir(d) < 0)
                                    goto error;
                                if (ok && q1 != NULL && q_append(&w, q1, tsf) < 0)
                                    goto error;
                                if (ok && q2 != NULL && q_append(&w, q2, tsf) < 0)
                                    goto error;
                                if (bump(&w, d, orig, tsf) < 0)
                                    goto error;
                                if (!ok) {
                                    /* a window at its threshold, port 0, or a destination
                                     * not classified yet: the rest of process() for a SYN */
                                    p = parse_tuple(fr, vl, kipv4, sip, dip, 6, sport, dport,
                                                    flags);
                                    PyObject *six = PyLong_FromLong(6);
                                    PyObject *args[3] = {p, tsf, six};
                                    r = (p && six && flush_held(&w) == 0)
                                            ? PyObject_Vectorcall(attempt, args, 3, NULL) : NULL;
                                    Py_XDECREF(six);
                                    if (r == NULL || reread_tick(&w) < 0)
                                        goto error;
                                    Py_CLEAR(r);
                                }
                                continue;
                            }
                        }
                    }
                }
                /* the fields are read already: build the parse tuple directly */
                p = parse_tuple(fr, vl, kipv4, sip, dip, (int)proto, sport, dport, flags);
                if (p == NULL)
                    goto error;
                r = call_process(&w, p, tsf, orig, key);
                if (r == NULL)
                    goto error;
                Py_CLEAR(r);
                slow++;
                if (reread_tick(&w) < 0)
                    goto error;
                continue;
            }
        }
        {
            PyObject *o1 = PyLong_FromSsize_t(pk), *o2 = PyLong_FromUnsignedLong(incl);
            if (!o1 || !o2) {
                Py_XDECREF(o1);
                Py_XDECREF(o2);
                goto error;
            }
            PyObject *args[3] = {data, o1, o2};
            p = flush_held(&w) < 0 ? NULL : PyObject_Vectorcall(w.parse, args, 3, NULL);
            Py_DECREF(o1);
            Py_DECREF(o2);
        }
        if (p == NULL)
            goto error;
        if (p == Py_None) {
            bad++;
            continue;
        }
        r = call_process(&w, p, tsf, orig, NULL);
        if (r == NULL)
            goto error;
        Py_CLEAR(r);
        slow++;
        if (reread_tick(&w) < 0)
            goto error;
    }
    Py_CLEAR(tsf); Py_CLEAR(sip); Py_CLEAR(dip); Py_CLEAR(key); Py_CLEAR(d);
    Py_CLEAR(p); Py_CLEAR(q1); Py_CLEAR(q2);
    if (flush_held(&w) < 0)
        goto error;
    w_clear(&w);
    PyBuffer_Release(&view);
    return Py_BuildValue("(nLLLd)", off, n, slow, bad, ts);

error:
    Py_XDECREF(tsf); Py_XDECREF(sip); Py_XDECREF(dip); Py_XDECREF(key); Py_XDECREF(d);
    Py_XDECREF(p); Py_XDECREF(q1); Py_XDECREF(q2); Py_XDECREF(r);
    tsf = sip = dip = key = d = p = q1 = q2 = r = NULL;
    {
        /* the flows made so far are in the store: their ids must stay taken */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (flush_held(&w) < 0)
            PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    w_clear(&w);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(data, off, limit, div, sensor, flow_dirs, tcp_rules, udp_rules, dedup_ms, dirty, "
     "tick, touch, hits_settled, process, parse, release, syn_state + (K_IPV4, FlowRecord), "
     "max_record, "
     "release_every, ts) -> (off, records, slow, malformed, last ts)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walk", "The sensor's fused pcap loop, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walk(void) {
    s_flow_tick = PyUnicode_InternFromString("flow_tick");
    s_append = PyUnicode_InternFromString("append");
    s_fminute = PyUnicode_InternFromString("_fminute");
    s_next_flow = PyUnicode_InternFromString("_next_flow");
    s_flows = PyUnicode_InternFromString("flows");
    s_dirty_flows = PyUnicode_InternFromString("dirty_flows");
    s_dirty_devices = PyUnicode_InternFromString("dirty_devices");
    s_evicted_flows = PyUnicode_InternFromString("evicted_flows");
    s_unseen_flows = PyUnicode_InternFromString("unseen_flows");
    s_flow_max = PyUnicode_InternFromString("flow_max");
    s_last_seen = PyUnicode_InternFromString("last_seen");
    s_id = PyUnicode_InternFromString("id");
    s_lru = PyUnicode_InternFromString("_lru");
    fzero = PyFloat_FromDouble(0.0);
    if (fzero == NULL)
        return NULL;
    for (int i = 0; i < FR_N; i++) {
        fr_name_objs[i] = PyUnicode_InternFromString(fr_names[i]);
        if (fr_name_objs[i] == NULL)
            return NULL;
    }
    if (!s_flow_tick || !s_append || !s_fminute || !s_next_flow || !s_flows || !s_dirty_flows ||
        !s_dirty_devices || !s_evicted_flows || !s_flow_max || !s_last_seen || !s_id || !s_lru ||
        !s_unseen_flows)
        return NULL;
    return PyModule_Create(&module);
}
