/* The TLS front's relay loop in C (tlsfront.py, tlsconn.py): once Python's ssl module has done a connection's
 * handshake and its checks, the connection's bytes move between the TLS socket and the plain socket
 * behind it here, on a thread that never holds the GIL: SSL_read from the client into the plain
 * socket, and from the plain socket SSL_write to the client.  Back-pressure as in _splice.c: a
 * direction whose bytes cannot be written on stops reading until its destination is writable.
 *
 * The SSL objects are the ssl module's own: ssl_pointer() takes the SSL* out of an _ssl._SSLSocket
 * (checking it is the one bound to the socket given) and holds a reference on it (SSL_up_ref), so
 * the Python object may go.  OpenSSL's functions are looked up in the very libssl the ssl module
 * loaded (init(path)); where that cannot be done, tlsconn.py relays in Python.
 *
 * serve(ctl_fd, done_fd) runs the loop until it reads "q" on ctl_fd; "n" + two native ints + an
 * SSL pointer (as 64 bits) + a 64-bit id adds a relay (both sockets non-blocking, owned by the loop from then on:
 * it closes them and releases the SSL).  The id of every relay that ends is written to done_fd. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_EVENTS 64
#define MSG_SIZE (1 + 2 * sizeof(int) + 2 * sizeof(uint64_t))

/* OpenSSL's ABI, as much of it as the loop uses */
typedef struct ssl_st SSL;
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_WANT_WRITE 3
#define SSL_ERROR_ZERO_RETURN 6
static int (*p_SSL_read)(SSL *, void *, int);
static int (*p_SSL_write)(SSL *, const void *, int);
static int (*p_SSL_get_error)(const SSL *, int);
static int (*p_SSL_shutdown)(SSL *);
static int (*p_SSL_up_ref)(SSL *);
static void (*p_SSL_free)(SSL *);
static int (*p_SSL_get_fd)(const SSL *);
static void (*p_ERR_clear_error)(void);

struct conn;

struct side {
    struct conn *conn;
    int index; /* 0: the TLS socket, 1: the plain one */
};

struct conn {
    int fd[2];
    SSL *ssl;
    uint64_t id;
    char *to_plain; /* decrypted, not yet written to fd[1] */
    size_t plain_len, plain_off;
    char *to_tls; /* read from fd[1], handed to SSL_write (again, until it takes it) */
    size_t tls_len;
    int tls_eof, plain_eof, read_wants_write, closed;
    int fatal; /* OpenSSL failed: no SSL_shutdown then */
    unsigned mask[2];
    struct side sides[2];
    struct conn *next; /* the live list, then the list to free after an epoll batch */
};

struct loop {
    int epoll_fd, ctl_fd, done_fd;
    struct conn *live, *dead;
};

static void close_conn(struct loop *lp, struct conn *c) {
    if (c->closed)
        return;
    c->closed = 1;
    for (int i = 0; i < 2; i++)
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_DEL, c->fd[i], NULL);
    if (!c->fatal) {
        p_ERR_clear_error();
        p_SSL_shutdown(c->ssl); /* close_notify, best effort: a reader of a close-delimited body sees a clean end */
    }
    p_SSL_free(c->ssl);
    close(c->fd[0]);
    close(c->fd[1]);
    ssize_t w = write(lp->done_fd, &c->id, sizeof c->id);
    (void)w;
    struct conn **p = &lp->live;
    while (*p && *p != c)
        p = &(*p)->next;
    if (*p)
        *p = c->next;
    c->next = lp->dead;
    lp->dead = c;
}

/* -1: the connection is done for */
static int flush_plain(struct conn *c) {
    while (c->plain_off < c->plain_len) {
        ssize_t m = send(c->fd[1], c->to_plain + c->plain_off, c->plain_len - c->plain_off, MSG_NOSIGNAL);
        if (m < 0)
            return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        c->plain_off += (size_t)m;
    }
    c->plain_len = c->plain_off = 0;
    return 0;
}

static int pump_tls(struct conn *c) {
    c->read_wants_write = 0;
    while (!c->plain_len && !c->tls_eof) {
        p_ERR_clear_error();
        int n = p_SSL_read(c->ssl, c->to_plain, CHUNK);
        if (n > 0) {
            c->plain_len = (size_t)n;
            if (flush_plain(c) < 0)
                return -1;
            continue;
        }
        int err = p_SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ)
            return 0;
        if (err == SSL_ERROR_WANT_WRITE) {
            c->read_wants_write = 1;
            return 0;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            c->tls_eof = 1;
            shutdown(c->fd[1], SHUT_WR);
            return 0;
        }
        c->fatal = 1;
        return -1; /* a TCP close without close_notify, or a TLS error */
    }
    return 0;
}

static int flush_tls(struct conn *c) {
    if (!c->tls_len)
        return 0;
    p_ERR_clear_error();
    int n = p_SSL_write(c->ssl, c->to_tls, (int)c->tls_len);
    if (n > 0) {
        c->tls_len = 0; /* the ssl module's SSLs take a write whole (no partial-write mode) */
        return 0;
    }
    int err = p_SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ)
        return 0;
    c->fatal = 1;
    return -1;
}

static int pump_plain(struct conn *c) {
    while (!c->tls_len && !c->plain_eof) {
        ssize_t n = recv(c->fd[1], c->to_tls, CHUNK, 0);
        if (n < 0)
            return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        if (n == 0) {
            c->plain_eof = 1;
            return 0;
        }
        c->tls_len = (size_t)n;
        if (flush_tls(c) < 0)
            return -1;
    }
    return 0;
}

static void update(struct loop *lp, struct conn *c) {
    unsigned want[2];
    want[0] = (!c->plain_len && !c->tls_eof ? EPOLLIN : 0) | (c->tls_len || c->read_wants_write ? EPOLLOUT : 0);
    want[1] = (!c->tls_len && !c->plain_eof ? EPOLLIN : 0) | (c->plain_len ? EPOLLOUT : 0);
    for (int i = 0; i < 2; i++) {
        if (want[i] != c->mask[i]) {
            struct epoll_event ev = {.events = want[i], .data.ptr = &c->sides[i]};
            c->mask[i] = want[i];
            epoll_ctl(lp->epoll_fd, EPOLL_CTL_MOD, c->fd[i], &ev);
        }
    }
}

static void on_ready(struct loop *lp, struct conn *c, int i, unsigned events) {
    if (events & EPOLLERR) {
        close_conn(lp, c);
        return;
    }
    if (events & EPOLLOUT) {
        if ((i == 0 ? flush_tls(c) : flush_plain(c)) < 0) {
            close_conn(lp, c);
            return;
        }
    }
    /* both directions every time: a record OpenSSL decrypted but nobody took raises no event */
    if (pump_tls(c) < 0 || pump_plain(c) < 0) {
        close_conn(lp, c);
        return;
    }
    if ((c->plain_eof && !c->tls_len) || (c->tls_eof && c->plain_eof) ||
        ((events & EPOLLHUP) && !c->mask[i])) {
        close_conn(lp, c);
        return;
    }
    update(lp, c);
}

static void add_conn(struct loop *lp, int tls_fd, int plain_fd, SSL *ssl, uint64_t id) {
    struct conn *c = calloc(1, sizeof *c);
    char *buffers = malloc(2 * CHUNK);
    if (c == NULL || buffers == NULL) {
        free(c);
        free(buffers);
        p_SSL_free(ssl);
        close(tls_fd);
        close(plain_fd);
        ssize_t w = write(lp->done_fd, &id, sizeof id);
        (void)w;
        return;
    }
    c->fd[0] = tls_fd;
    c->fd[1] = plain_fd;
    c->ssl = ssl;
    c->id = id;
    c->to_plain = buffers;
    c->to_tls = buffers + CHUNK;
    for (int i = 0; i < 2; i++) {
        c->sides[i].conn = c;
        c->sides[i].index = i;
        c->mask[i] = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->sides[i]};
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_ADD, c->fd[i], &ev);
    }
    c->next = lp->live;
    lp->live = c;
    on_ready(lp, c, 0, EPOLLIN); /* OpenSSL may hold decrypted bytes already: no event would tell */
}

/* 1: quit was asked for */
static int control(struct loop *lp) {
    char buf[MSG_SIZE * 64];
    for (;;) {
        ssize_t n = read(lp->ctl_fd, buf, sizeof buf);
        if (n <= 0)
            return n == 0; /* EOF: the owner is gone */
        for (ssize_t off = 0; off + (ssize_t)MSG_SIZE <= n; off += MSG_SIZE) {
            if (buf[off] == 'q')
                return 1;
            int fds[2];
            uint64_t ssl, id;
            memcpy(fds, buf + off + 1, sizeof fds);
            memcpy(&ssl, buf + off + 1 + sizeof fds, sizeof ssl);
            memcpy(&id, buf + off + 1 + sizeof fds + sizeof ssl, sizeof id);
            add_conn(lp, fds[0], fds[1], (SSL *)(uintptr_t)ssl, id);
        }
    }
}

static void free_dead(struct loop *lp) {
    while (lp->dead) {
        struct conn *c = lp->dead;
        lp->dead = c->next;
        free(c->to_plain);
        free(c);
    }
}

static void run(struct loop *lp) {
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(lp->epoll_fd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        int quit = 0;
        for (int k = 0; k < n; k++) {
            struct side *s = events[k].data.ptr;
            if (s == NULL) {
                quit |= control(lp);
                continue;
            }
            if (!s->conn->closed)
                on_ready(lp, s->conn, s->index, events[k].events);
        }
        free_dead(lp);
        if (quit)
            return;
    }
}

static PyObject *serve(PyObject *self, PyObject *args) {
    int ctl_fd, done_fd;
    if (!PyArg_ParseTuple(args, "ii", &ctl_fd, &done_fd))
        return NULL;
    if (p_SSL_read == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "init() did not find OpenSSL");
        return NULL;
    }
    struct loop lp = {.epoll_fd = epoll_create1(EPOLL_CLOEXEC), .ctl_fd = ctl_fd, .done_fd = done_fd};
    if (lp.epoll_fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(lp.epoll_fd, EPOLL_CTL_ADD, ctl_fd, &ev) < 0) {
        close(lp.epoll_fd);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_BEGIN_ALLOW_THREADS
    run(&lp);
    while (lp.live)
        close_conn(&lp, lp.live);
    free_dead(&lp);
    close(lp.epoll_fd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* init(libssl_path): look OpenSSL's functions up in the libssl the ssl module already loaded */
static PyObject *init(PyObject *self, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path))
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        Py_RETURN_FALSE;
    *(void **)&p_SSL_read = dlsym(lib, "SSL_read");
    *(void **)&p_SSL_write = dlsym(lib, "SSL_write");
    *(void **)&p_SSL_get_error = dlsym(lib, "SSL_get_error");
    *(void **)&p_SSL_shutdown = dlsym(lib, "SSL_shutdown");
    *(void **)&p_SSL_up_ref = dlsym(lib, "SSL_up_ref");
    *(void **)&p_SSL_free = dlsym(lib, "SSL_free");
    *(void **)&p_SSL_get_fd = dlsym(lib, "SSL_get_fd");
    *(void **)&p_ERR_clear_error = dlsym(lib, "ERR_clear_error");
    if (!p_SSL_read || !p_SSL_write || !p_SSL_get_error || !p_SSL_shutdown || !p_SSL_up_ref || !p_SSL_free ||
        !p_SSL_get_fd || !p_ERR_clear_error) {
        p_SSL_read = NULL;
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* CPython's _ssl._SSLSocket begins {PyObject_HEAD; PyObject *Socket; SSL *ssl; ...} (3.7 to 3.13) */
typedef struct {
    PyObject_HEAD
    PyObject *socket;
    SSL *ssl;
} ssl_socket_head;

/* ssl_pointer(sslobj, fd): its SSL*, with a reference of our own; 0 unless it is the one on fd */
static PyObject *ssl_pointer(PyObject *self, PyObject *args) {
    PyObject *obj;
    int fd;
    if (!PyArg_ParseTuple(args, "Oi", &obj, &fd))
        return NULL;
    if (p_SSL_read == NULL || strcmp(Py_TYPE(obj)->tp_name, "_ssl._SSLSocket") != 0)
        return PyLong_FromLong(0);
    SSL *ssl = ((ssl_socket_head *)obj)->ssl;
    if (ssl == NULL || p_SSL_get_fd(ssl) != fd || p_SSL_up_ref(ssl) != 1)
        return PyLong_FromLong(0);
    return PyLong_FromVoidPtr(ssl);
}

/* release(pointer): drop the reference ssl_pointer took, for a relay that never started */
static PyObject *release(PyObject *self, PyObject *args) {
    PyObject *ptr;
    if (!PyArg_ParseTuple(args, "O", &ptr))
        return NULL;
    SSL *ssl = PyLong_AsVoidPtr(ptr);
    if (ssl != NULL && p_SSL_free != NULL)
        p_SSL_free(ssl);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(libssl_path) -> bool: find OpenSSL in the libssl already loaded."},
    {"ssl_pointer", ssl_pointer, METH_VARARGS, "ssl_pointer(sslobj, fd) -> int: its SSL*, referenced; 0: no."},
    {"release", release, METH_VARARGS, "release(pointer): drop a reference ssl_pointer took."},
    {"serve", serve, METH_VARARGS, "serve(ctl_fd, done_fd): relay until 'q' arrives on ctl_fd."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tlsrelay", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tlsrelay(void) { return PyModule_Create(&module); }
