/* The client-port relay loop of splice.py in C: byte-for-byte relays between socket pairs with
 * splice(2), on a thread that never holds the GIL.  Same algorithm as splice.py's Python loop (which
 * is used where this extension was not built): per direction a pipe; a direction whose pipe cannot be
 * emptied into its destination stops reading its source until the destination is writable again.
 *
 * serve(ctl_fd) runs the loop until it reads "q" on ctl_fd; "n" followed by two native ints adds a
 * relay between those two sockets (non-blocking, owned by the loop from then on: it closes them). */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_EVENTS 64
#define MSG_SIZE (1 + 2 * sizeof(int))

struct relay;

struct side {
    struct relay *relay;
    int index;
};

struct direction {
    int src, dst;
    int pipe_r, pipe_w;
    size_t pending; /* bytes in the pipe, not yet in dst */
    int eof;        /* src said EOF; dst shut for writing */
};

struct relay {
    int fd[2];
    struct direction d[2]; /* d[i]: out of fd[i], into fd[1-i] */
    struct side sides[2];
    unsigned mask[2];
    int closed;
    struct relay *next; /* the live list, then the list to free after an epoll batch */
};

struct loop {
    int epoll_fd;
    int ctl_fd;
    struct relay *live;
    struct relay *dead;
};

static void close_relay(struct loop *lp, struct relay *r) {
    if (r->closed)
        return;
    r->closed = 1;
    for (int i = 0; i < 2; i++) {
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_DEL, r->fd[i], NULL);
        close(r->fd[i]);
        close(r->d[i].pipe_r);
        close(r->d[i].pipe_w);
    }
    struct relay **p = &lp->live;
    while (*p && *p != r)
        p = &(*p)->next;
    if (*p)
        *p = r->next;
    r->next = lp->dead;
    lp->dead = r;
}

static int flush(struct direction *d) {
    while (d->pending) {
        ssize_t m = splice(d->pipe_r, NULL, d->dst, NULL, d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (m < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return -1;
        }
        d->pending -= (size_t)m;
    }
    return 0;
}

static int pump(struct direction *d) {
    ssize_t n = splice(d->src, NULL, d->pipe_w, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        return -1;
    }
    if (n == 0) {
        d->eof = 1;
        shutdown(d->dst, SHUT_WR);
        return 0;
    }
    d->pending += (size_t)n;
    return flush(d);
}

static void update(struct loop *lp, struct relay *r) {
    for (int i = 0; i < 2; i++) {
        unsigned mask = 0;
        if (!r->d[i].pending && !r->d[i].eof)
            mask |= EPOLLIN;
        if (r->d[1 - i].pending)
            mask |= EPOLLOUT;
        if (mask != r->mask[i]) {
            struct epoll_event ev = {.events = mask, .data.ptr = &r->sides[i]};
            r->mask[i] = mask;
            epoll_ctl(lp->epoll_fd, EPOLL_CTL_MOD, r->fd[i], &ev);
        }
    }
}

static void on_ready(struct loop *lp, struct relay *r, int i, unsigned events) {
    if ((events & EPOLLERR) || ((events & EPOLLHUP) && !r->mask[i])) {
        close_relay(lp, r);
        return;
    }
    if ((events & EPOLLOUT) && flush(&r->d[1 - i]) < 0) {
        close_relay(lp, r);
        return;
    }
    if ((events & (EPOLLIN | EPOLLHUP)) && !r->d[i].pending && !r->d[i].eof && pump(&r->d[i]) < 0) {
        close_relay(lp, r);
        return;
    }
    if (r->d[0].eof && r->d[1].eof && !r->d[0].pending && !r->d[1].pending) {
        close_relay(lp, r);
        return;
    }
    update(lp, r);
}

static void add_relay(struct loop *lp, int a, int b) {
    struct relay *r = calloc(1, sizeof *r);
    int pipes[2][2];
    if (r == NULL || pipe2(pipes[0], O_NONBLOCK | O_CLOEXEC) < 0) {
        free(r);
        close(a);
        close(b);
        return;
    }
    if (pipe2(pipes[1], O_NONBLOCK | O_CLOEXEC) < 0) {
        close(pipes[0][0]);
        close(pipes[0][1]);
        free(r);
        close(a);
        close(b);
        return;
    }
    r->fd[0] = a;
    r->fd[1] = b;
    for (int i = 0; i < 2; i++) {
        r->d[i].src = r->fd[i];
        r->d[i].dst = r->fd[1 - i];
        r->d[i].pipe_r = pipes[i][0];
        r->d[i].pipe_w = pipes[i][1];
        r->sides[i].relay = r;
        r->sides[i].index = i;
        r->mask[i] = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &r->sides[i]};
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_ADD, r->fd[i], &ev);
    }
    r->next = lp->live;
    lp->live = r;
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
            memcpy(fds, buf + off + 1, sizeof fds);
            add_relay(lp, fds[0], fds[1]);
        }
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
            if (!s->relay->closed)
                on_ready(lp, s->relay, s->index, events[k].events);
        }
        while (lp->dead) {
            struct relay *r = lp->dead;
            lp->dead = r->next;
            free(r);
        }
        if (quit)
            return;
    }
}

static PyObject *serve(PyObject *self, PyObject *args) {
    int ctl_fd;
    if (!PyArg_ParseTuple(args, "i", &ctl_fd))
        return NULL;
    struct loop lp = {.epoll_fd = epoll_create1(EPOLL_CLOEXEC), .ctl_fd = ctl_fd};
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
        close_relay(&lp, lp.live);
    while (lp.dead) {
        struct relay *r = lp.dead;
        lp.dead = r->next;
        free(r);
    }
    close(lp.epoll_fd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS, "serve(ctl_fd): relay until 'q' arrives on ctl_fd."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_splice", NULL, -1, methods};

PyMODINIT_FUNC PyInit__splice(void) { return PyModule_Create(&module); }
