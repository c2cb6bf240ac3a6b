/* The client-port relay loop in C (the Python one, relay_loop.py, is used where this was not built).
 * It runs in the relay process (splice.py starts it): two descriptors per gRPC connection, the
 * client's socket and one to gRPC core's internal listener; none of them count against the server
 * process's descriptor limit.
 *
 * serve(ctl_fd, name) relays until ctl_fd (a SOCK_SEQPACKET socket) says EOF. Each message on it
 * carries one client socket (SCM_RIGHTS) and the bytes the server already read from it; the loop
 * connects to the abstract unix socket ``name``, sends those bytes first, then moves bytes both ways
 * with recv/send through one buffer (a direction whose destination is full keeps what is left over
 * and stops reading its source until it drained). A connection it cannot take (no descriptor left,
 * gRPC core not accepting) is closed, and "refused <errno>" goes back on ctl_fd; "state <received>
 * <open>" tells the server how many connections it handed over reached the relay and how many are
 * open (see report_state).
 *
 * gRPC core refuses a too-large message at its length prefix, in its own words; on the way to the
 * client that trailer is given grpc-go's words, which etcd's clients see (see ``emit_held``).
 *
 * Built twice: as the extension module ``_splice`` (serve() runs in a bare interpreter), and with
 * RELAY_PROGRAM defined as the program ``etcdlite-relay CTL_FD NAME`` (setup.py), so the relay process
 * holds no interpreter: ~1 MiB of memory instead of ~10. */
#define _GNU_SOURCE
#ifndef RELAY_PROGRAM
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_EVENTS 64
#define HEAD_MAX 65536 /* the bytes the server read before handing a connection over */
#define FRAME_HEADER 9
#define HELD_MAX 512 /* trailers this small are looked at whole; core's refusal is ~150 bytes */
#define H2_HEADERS 0x1
#define H2_END_STREAM_AND_HEADERS 0x5

struct relay;

struct side {
    struct relay *relay;
    int index;
};

struct direction {
    char *pending; /* read from src, not yet written to dst (malloc'ed; NULL when empty) */
    size_t off, len;
    int eof; /* src said EOF; dst is shut for writing once pending is empty */
};

/* Where core's HTTP/2 frames begin, to find a trailer in them: core -> client only. */
struct frames {
    unsigned char held[FRAME_HEADER + HELD_MAX]; /* a frame header being read, or a frame held whole */
    size_t have;
    size_t need;      /* bytes the held frame still lacks */
    size_t pass_left; /* payload bytes of the current frame to pass on unlooked-at */
};

struct relay {
    int fd[2];             /* [0] the client, [1] gRPC core */
    struct direction d[2]; /* d[i]: out of fd[i], into fd[1 - i] */
    struct side sides[2];
    unsigned mask[2];
    int closed;
    struct frames frames;
    struct relay *prev, *next; /* the open relays */
    struct relay *next_dead;   /* freed after the epoll batch that closed it */
};

struct loop {
    int epoll_fd;
    int ctl_fd;
    unsigned ctl_mask;
    unsigned long long received; /* connections handed over so far */
    long live;                   /* relays open */
    int state_sent;              /* the server has heard of received and live as they are */
    struct sockaddr_un target;
    socklen_t target_len;
    struct relay *relays; /* open */
    struct relay *dead;   /* closed in this epoll batch, freed after it */
    unsigned char in[CHUNK];
    unsigned char out[CHUNK + FRAME_HEADER + HELD_MAX];
};

/* "refused <errno>", for the server's log (lost when the server is not reading: no matter) */
static void report_refused(struct loop *lp, int err) {
    char msg[32];
    int n = snprintf(msg, sizeof msg, "refused %d", err);
    (void)send(lp->ctl_fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void watch_ctl(struct loop *lp, unsigned mask) {
    if (mask != lp->ctl_mask) {
        struct epoll_event ev = {.events = mask, .data.ptr = NULL};
        lp->ctl_mask = mask;
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_MOD, lp->ctl_fd, &ev);
    }
}

/* "state <received> <live>": from it the server counts the connections it still holds gRPC core's
 * end of; absolute numbers, so a report the server's full socket could not take is just sent later
 * (when ctl_fd is writable again). */
static void report_state(struct loop *lp) {
    if (lp->state_sent)
        return;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "state %llu %ld", lp->received, lp->live);
    if (send(lp->ctl_fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        if (errno == EAGAIN)
            watch_ctl(lp, EPOLLIN | EPOLLOUT);
        return;
    }
    lp->state_sent = 1;
    watch_ctl(lp, EPOLLIN);
}

static void close_relay(struct loop *lp, struct relay *r) {
    if (r->closed)
        return;
    r->closed = 1;
    lp->live--;
    lp->state_sent = 0;
    for (int i = 0; i < 2; i++) {
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_DEL, r->fd[i], NULL);
        close(r->fd[i]);
        free(r->d[i].pending);
        r->d[i].pending = NULL;
    }
    if (r->prev)
        r->prev->next = r->next;
    else
        lp->relays = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next_dead = lp->dead;
    lp->dead = r;
}

/* core's refusal of a too-large message, as chttp2's close_from_api writes it: a literal
 * grpc-message field, never Huffman-coded; grpc-go (and so etcd) words it OURS */
static const char KEY[] = "\x00\x0cgrpc-message";
static const char CORES[] = "SERVER: Received message larger than max (";
static const char OURS[] = "grpc: received message larger than max (";
#define KEY_LEN (sizeof KEY - 1)
#define CORES_LEN (sizeof CORES - 1)
#define OURS_LEN (sizeof OURS - 1)

/* Copy a whole held frame to out, with core's words replaced by grpc-go's; returns its length. */
static size_t emit_held(const unsigned char *frame, size_t total, unsigned char *out) {
    const unsigned char *p = frame + FRAME_HEADER;
    size_t len = total - FRAME_HEADER;
    for (size_t at = 0; at + KEY_LEN + 1 <= len; at++) {
        if (memcmp(p + at, KEY, KEY_LEN) != 0)
            continue;
        size_t text = at + KEY_LEN + 1;
        size_t text_len = p[at + KEY_LEN];
        if (text_len >= 128 || text_len < CORES_LEN || text + text_len > len ||
            memcmp(p + text, CORES, CORES_LEN) != 0)
            break;
        size_t new_len = len - (CORES_LEN - OURS_LEN);
        memcpy(out, frame, FRAME_HEADER);
        out[0] = (unsigned char)(new_len >> 16);
        out[1] = (unsigned char)(new_len >> 8);
        out[2] = (unsigned char)new_len;
        unsigned char *o = out + FRAME_HEADER;
        memcpy(o, p, at + KEY_LEN);
        o += at + KEY_LEN;
        *o++ = (unsigned char)(text_len - (CORES_LEN - OURS_LEN));
        memcpy(o, OURS, OURS_LEN);
        o += OURS_LEN;
        memcpy(o, p + text + CORES_LEN, len - text - CORES_LEN);
        return FRAME_HEADER + new_len;
    }
    memcpy(out, frame, total);
    return total;
}

/* Pass n bytes of core's output to out (at most n + FRAME_HEADER + HELD_MAX bytes), holding back a
 * small trailer frame until it is whole; returns the bytes written to out. */
static size_t filter(struct frames *f, const unsigned char *in, size_t n, unsigned char *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        size_t k;
        if (f->pass_left) {
            k = n - i < f->pass_left ? n - i : f->pass_left;
            memcpy(out + o, in + i, k);
            o += k;
            i += k;
            f->pass_left -= k;
            continue;
        }
        if (f->need) {
            k = n - i < f->need ? n - i : f->need;
            memcpy(f->held + f->have, in + i, k);
            f->have += k;
            i += k;
            f->need -= k;
            if (!f->need) {
                o += emit_held(f->held, f->have, out + o);
                f->have = 0;
            }
            continue;
        }
        k = FRAME_HEADER - f->have < n - i ? FRAME_HEADER - f->have : n - i;
        memcpy(f->held + f->have, in + i, k);
        f->have += k;
        i += k;
        if (f->have < FRAME_HEADER)
            break;
        size_t len = ((size_t)f->held[0] << 16) | ((size_t)f->held[1] << 8) | f->held[2];
        if (f->held[3] == H2_HEADERS && f->held[4] == H2_END_STREAM_AND_HEADERS && len > 0 && len <= HELD_MAX) {
            f->need = len;
        } else {
            memcpy(out + o, f->held, FRAME_HEADER);
            o += FRAME_HEADER;
            f->have = 0;
            f->pass_left = len;
        }
    }
    return o;
}

/* -1: the relay failed */
static int flush(struct relay *r, int i) {
    struct direction *d = &r->d[i];
    while (d->pending) {
        ssize_t m = send(r->fd[1 - i], d->pending + d->off, d->len - d->off, MSG_NOSIGNAL);
        if (m < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        d->off += (size_t)m;
        if (d->off == d->len) {
            free(d->pending);
            d->pending = NULL;
        }
    }
    return 0;
}

/* Send what is left over later. -1: the relay failed. */
static int keep(struct direction *d, const unsigned char *data, size_t len) {
    d->pending = malloc(len);
    if (d->pending == NULL)
        return -1;
    memcpy(d->pending, data, len);
    d->off = 0;
    d->len = len;
    return 0;
}

/* One read from fd[i], written on to fd[1 - i]. -1: the relay failed. */
static int pump(struct loop *lp, struct relay *r, int i) {
    struct direction *d = &r->d[i];
    ssize_t n = recv(r->fd[i], lp->in, CHUNK, 0);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0) {
        d->eof = 1;
        shutdown(r->fd[1 - i], SHUT_WR);
        return 0;
    }
    const unsigned char *data = lp->in;
    size_t len = (size_t)n;
    if (i == 1) {
        len = filter(&r->frames, lp->in, len, lp->out);
        data = lp->out;
    }
    ssize_t m = len ? send(r->fd[1 - i], data, len, MSG_NOSIGNAL) : 0;
    if (m < 0) {
        if (errno != EAGAIN && errno != EINTR)
            return -1;
        m = 0;
    }
    return (size_t)m < len ? keep(d, data + m, len - (size_t)m) : 0;
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
    if ((events & EPOLLOUT) && flush(r, 1 - i) < 0) {
        close_relay(lp, r);
        return;
    }
    if ((events & (EPOLLIN | EPOLLHUP)) && !r->d[i].pending && !r->d[i].eof && pump(lp, r, i) < 0) {
        close_relay(lp, r);
        return;
    }
    if (r->d[0].eof && r->d[1].eof && !r->d[0].pending && !r->d[1].pending) {
        close_relay(lp, r);
        return;
    }
    update(lp, r);
}

/* The upstream connection to gRPC core, or -1 with errno set. */
static int connect_core(struct loop *lp) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&lp->target, lp->target_len) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static void add_relay(struct loop *lp, int client, const unsigned char *head, size_t head_len) {
    int core = connect_core(lp);
    if (core < 0) {
        report_refused(lp, errno);
        close(client);
        return;
    }
    struct relay *r = calloc(1, sizeof *r);
    if (r == NULL) {
        report_refused(lp, ENOMEM);
        close(client);
        close(core);
        return;
    }
    r->fd[0] = client;
    r->fd[1] = core;
    for (int i = 0; i < 2; i++) {
        r->sides[i].relay = r;
        r->sides[i].index = i;
        r->mask[i] = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &r->sides[i]};
        epoll_ctl(lp->epoll_fd, EPOLL_CTL_ADD, r->fd[i], &ev);
    }
    r->next = lp->relays;
    if (lp->relays)
        lp->relays->prev = r;
    lp->relays = r;
    lp->live++;
    ssize_t m = send(core, head, head_len, MSG_NOSIGNAL);
    if (m < 0 && errno != EAGAIN) {
        close_relay(lp, r);
        return;
    }
    if (m < (ssize_t)head_len && keep(&r->d[0], head + (m < 0 ? 0 : m), head_len - (size_t)(m < 0 ? 0 : m)) < 0) {
        close_relay(lp, r);
        return;
    }
    update(lp, r);
}

/* Take the connections handed over; 1: the server is gone (EOF), stop. */
static int control(struct loop *lp) {
    for (;;) {
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cmsg;
        struct iovec iov = {.iov_base = lp->in, .iov_len = HEAD_MAX};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg.buf,
                             .msg_controllen = sizeof cmsg.buf};
        ssize_t n = recvmsg(lp->ctl_fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : 1;
        if (n == 0)
            return 1;
        lp->received++;
        lp->state_sent = 0;
        int client = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
                memcpy(&client, CMSG_DATA(c), sizeof client);
        }
        if (client < 0 || (msg.msg_flags & MSG_TRUNC)) {
            /* no descriptor left here (the kernel closed the connection in transit), or a head
             * longer than the server ever sends */
            report_refused(lp, (msg.msg_flags & MSG_CTRUNC) ? EMFILE : EMSGSIZE);
            if (client >= 0)
                close(client);
            continue;
        }
        add_relay(lp, client, lp->in, (size_t)n);
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
                if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    quit |= control(lp);
                continue;
            }
            if (!s->relay->closed)
                on_ready(lp, s->relay, s->index, events[k].events);
        }
        while (lp->dead) {
            struct relay *r = lp->dead;
            lp->dead = r->next_dead;
            free(r);
        }
        if (quit)
            return;
        report_state(lp);
    }
}

/* A loop relaying what ctl_fd hands over to the abstract unix socket ``name``; NULL and errno on failure. */
static struct loop *loop_open(int ctl_fd, const char *name, size_t name_len) {
    if (name_len + 1 > sizeof(((struct sockaddr_un *)0)->sun_path)) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    struct loop *lp = calloc(1, sizeof *lp);
    if (lp == NULL)
        return NULL;
    lp->ctl_fd = ctl_fd;
    lp->ctl_mask = EPOLLIN;
    lp->state_sent = 1;
    lp->target.sun_family = AF_UNIX;
    memcpy(lp->target.sun_path + 1, name, name_len); /* abstract: a NUL, then the name */
    lp->target_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + name_len);
    lp->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (lp->epoll_fd < 0 || epoll_ctl(lp->epoll_fd, EPOLL_CTL_ADD, ctl_fd, &ev) < 0) {
        int err = errno;
        if (lp->epoll_fd >= 0)
            close(lp->epoll_fd);
        free(lp);
        errno = err;
        return NULL;
    }
    return lp;
}

/* Every relay closed, everything freed. */
static void loop_close(struct loop *lp) {
    while (lp->relays)
        close_relay(lp, lp->relays);
    while (lp->dead) {
        struct relay *r = lp->dead;
        lp->dead = r->next_dead;
        free(r);
    }
    close(lp->epoll_fd);
    free(lp);
}

#ifdef RELAY_PROGRAM
/* etcdlite-relay CTL_FD NAME: says "ready" on CTL_FD, relays until it says EOF. It ignores the
 * terminal's and a process group's stop signals: the server ends it by closing its end of CTL_FD. */
int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: etcdlite-relay CTL_FD NAME (started by etcdlite)\n");
        return 2;
    }
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    char *end;
    long ctl_fd = strtol(argv[1], &end, 10);
    if (*end || ctl_fd < 0 || ctl_fd > 1 << 30) {
        fprintf(stderr, "etcdlite-relay: bad descriptor %s\n", argv[1]);
        return 2;
    }
    struct loop *lp = loop_open((int)ctl_fd, argv[2], strlen(argv[2]));
    if (lp == NULL) {
        perror("etcdlite-relay");
        return 1;
    }
    if (write((int)ctl_fd, "ready", 5) != 5) {
        perror("etcdlite-relay");
        return 1;
    }
    run(lp);
    loop_close(lp);
    return 0;
}
#else
static PyObject *serve(PyObject *self, PyObject *args) {
    int ctl_fd;
    const char *name;
    Py_ssize_t name_len;
    if (!PyArg_ParseTuple(args, "is#", &ctl_fd, &name, &name_len))
        return NULL;
    if ((size_t)name_len + 1 > sizeof(((struct sockaddr_un *)0)->sun_path))
        return PyErr_Format(PyExc_ValueError, "socket name too long");
    struct loop *lp = loop_open(ctl_fd, name, (size_t)name_len);
    if (lp == NULL)
        return errno == ENOMEM ? PyErr_NoMemory() : PyErr_SetFromErrno(PyExc_OSError);
    Py_BEGIN_ALLOW_THREADS
    run(lp);
    loop_close(lp);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS, "serve(ctl_fd, name): relay connections handed over on ctl_fd to @name."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_splice", NULL, -1, methods};

PyMODINIT_FUNC PyInit__splice(void) { return PyModule_Create(&module); }
#endif
