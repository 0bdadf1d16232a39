/*
 * c-epoll-echo.c: a single-threaded, edge-triggered epoll TCP echo server in plain C.
 *
 * A reference peer for `ringlab-bench --peer`, written for ringlab: an independent,
 * idiomatic C implementation of the readiness model at its best, to measure ringlab's own
 * epoll backend against.
 *
 *   Usage: c-epoll-echo PORT [ADDR]      (ADDR: IPv4, default 127.0.0.1; PORT 0 picks one)
 *
 * * The listener and every connection are nonblocking and registered once, edge-triggered;
 *   a connection for EPOLLIN | EPOLLOUT | EPOLLRDHUP, so epoll_ctl is never needed again.
 * * accept4 until EAGAIN; on EMFILE/ENFILE a reserved descriptor is given up to accept and
 *   drop the pending connection, so the edge-triggered listener cannot stall or spin.
 * * Reads go into one 64 KiB buffer per loop, until EAGAIN or a short read (with ET a short
 *   read means the socket was drained and later data raises a new edge; once EPOLLRDHUP is
 *   seen the socket is read to its EOF), at most READS_PER_TURN reads per connection per
 *   turn so one flood cannot starve the others (the rest continues next turn).
 * * Every read is written back at once; what the socket does not take is kept in a
 *   per-connection buffer (allocated on the first short write, at most one read's worth)
 *   and the connection stops reading until the edge-triggered EPOLLOUT has drained it.
 * * SIGINT/SIGTERM arrive through a signalfd in the same epoll set: exit status 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { READ_BUF = 64 * 1024, MAX_EVENTS = 512, BACKLOG = 4096, READS_PER_TURN = 16 };

struct conn {
	unsigned char *out; /* unsent output (READ_BUF bytes), allocated on the first short write */
	uint32_t out_off;   /* bytes of out already sent */
	uint32_t out_len;   /* bytes in out; nonzero: reading is stalled until it drains */
	bool open;
	bool rdhup;  /* the peer's FIN is known: read to EOF */
	bool more;   /* input may be left unread (stalled on output, or the read cap hit) */
	bool queued; /* in the list of connections to read again next turn */
};

struct fdvec {
	int *v;
	size_t len, cap;
};

static struct conn *conns; /* indexed by descriptor */
static size_t nconns;
static struct fdvec again, again_next; /* connections that hit the read cap */
static unsigned char rbuf[READ_BUF];
static int lfd = -1, reserve_fd = -1;

static bool fdvec_push(struct fdvec *q, int fd)
{
	if (q->len == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 256;
		int *v = realloc(q->v, cap * sizeof *v);
		if (!v)
			return false;
		q->v = v;
		q->cap = cap;
	}
	q->v[q->len++] = fd;
	return true;
}

/* The table slot for fd, growing the table as needed (NULL if out of memory). */
static struct conn *conn_slot(int fd)
{
	if ((size_t)fd >= nconns) {
		size_t n = nconns ? nconns : 1024;
		while (n <= (size_t)fd)
			n *= 2;
		struct conn *t = realloc(conns, n * sizeof *t);
		if (!t)
			return NULL;
		memset(t + nconns, 0, (n - nconns) * sizeof *t);
		conns = t;
		nconns = n;
	}
	return &conns[fd];
}

static void conn_close(int fd)
{
	struct conn *c = &conns[fd];
	free(c->out);
	memset(c, 0, sizeof *c);
	close(fd); /* also removes it from the epoll set */
}

/* Send what is pending: -1 on error, 0 when drained, 1 if the socket is full. */
static int flush_out(int fd, struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n >= 0)
			c->out_off += (uint32_t)n;
		else if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 1;
		else if (errno != EINTR)
			return -1;
	}
	c->out_off = c->out_len = 0;
	return 0;
}

/* Echo len bytes of rbuf; keep what the socket does not take. As flush_out. */
static int echo(int fd, struct conn *c, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(fd, rbuf + off, len - off, MSG_NOSIGNAL);
		if (n >= 0) {
			off += (size_t)n;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (!c->out && !(c->out = malloc(READ_BUF)))
				return -1;
			memcpy(c->out, rbuf + off, len - off);
			c->out_off = 0;
			c->out_len = (uint32_t)(len - off);
			return 1;
		} else if (errno != EINTR) {
			return -1;
		}
	}
	return 0;
}

/* Read and echo until the socket is drained, the output is stalled or the cap is hit.
 * Returns -1 when the connection is to be closed (EOF or error). */
static int read_some(int fd, struct conn *c)
{
	for (int i = 0; i < READS_PER_TURN;) {
		ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
		if (n > 0) {
			i++;
			int r = echo(fd, c, (size_t)n);
			if (r < 0)
				return -1;
			if (r > 0) { /* stalled: resume once EPOLLOUT drains the output */
				c->more = true;
				return 0;
			}
			if ((size_t)n < sizeof rbuf && !c->rdhup)
				goto drained;
		} else if (n == 0) {
			return -1;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			goto drained;
		} else if (errno != EINTR) {
			return -1;
		}
	}
	c->more = true;
	if (!c->queued) {
		if (!fdvec_push(&again_next, fd))
			return -1;
		c->queued = true;
	}
	return 0;
drained:
	c->more = false;
	return 0;
}

static void accept_all(int epfd)
{
	static bool warned;
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
				continue;
			if (!warned) {
				fprintf(stderr, "c-epoll-echo: accept: %s (dropping connections)\n",
					strerror(errno));
				warned = true;
			}
			if ((errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
				/* Free a descriptor to take the connection off the queue, and drop it. */
				close(reserve_fd);
				fd = accept(lfd, NULL, NULL);
				if (fd >= 0)
					close(fd);
				reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
				if (fd >= 0)
					continue;
			}
			return; /* nothing else to do: the next connection raises a new edge */
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct conn *c = conn_slot(fd);
		struct epoll_event ev = {
			.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
			.data.fd = fd,
		};
		if (!c || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			continue;
		}
		c->open = true;
	}
}

static void on_event(int fd, uint32_t events)
{
	struct conn *c = &conns[fd];
	if (!c->open)
		return;
	if (events & (EPOLLERR | EPOLLHUP)) {
		conn_close(fd);
		return;
	}
	if (events & EPOLLRDHUP)
		c->rdhup = true;
	if (c->out_len) {
		if (!(events & EPOLLOUT))
			return; /* still full: reading stays stalled */
		int r = flush_out(fd, c);
		if (r != 0) {
			if (r < 0)
				conn_close(fd);
			return;
		}
	}
	if ((events & (EPOLLIN | EPOLLRDHUP)) || c->more) {
		if (read_some(fd, c) < 0)
			conn_close(fd);
	}
}

static int parse_port(const char *s)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 65535)
		return -1;
	return (int)v;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s PORT [ADDR]\n", argv[0]);
		return 2;
	}
	int port = parse_port(argv[1]);
	if (port < 0) {
		fprintf(stderr, "%s: bad port '%s' (0-65535)\n", argv[0], argv[1]);
		return 2;
	}
	const char *host = argc == 3 ? argv[2] : "127.0.0.1";
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "%s: bad IPv4 address '%s'\n", argv[0], host);
		return 2;
	}

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	int sfd = -1, epfd = -1, one = 1;
	socklen_t salen = sizeof sa;
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
	    (lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, BACKLOG) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0 ||
	    (epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		fprintf(stderr, "c-epoll-echo: %s:%d: %s\n", host, port, strerror(errno));
		return 1;
	}
	struct epoll_event lev = { .events = EPOLLIN | EPOLLET, .data.fd = lfd };
	struct epoll_event sev = { .events = EPOLLIN, .data.fd = sfd };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0 ||
	    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &sev) < 0) {
		fprintf(stderr, "c-epoll-echo: epoll_ctl: %s\n", strerror(errno));
		return 1;
	}
	reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
	fflush(stdout);

	static struct epoll_event evs[MAX_EVENTS];
	bool running = true;
	while (running) {
		int n = epoll_wait(epfd, evs, MAX_EVENTS, again_next.len ? 0 : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "c-epoll-echo: epoll_wait: %s\n", strerror(errno));
			return 1;
		}
		/* Last turn's capped connections are read again after this turn's events. */
		struct fdvec t = again;
		again = again_next;
		again_next = t;
		again_next.len = 0;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == lfd)
				accept_all(epfd);
			else if (fd == sfd)
				running = false;
			else
				on_event(fd, evs[i].events);
		}
		for (size_t i = 0; i < again.len; i++) {
			int fd = again.v[i];
			struct conn *c = &conns[fd];
			if (!c->open || !c->queued)
				continue; /* closed (or already requeued) since */
			c->queued = false;
			if (!c->out_len && read_some(fd, c) < 0)
				conn_close(fd);
		}
	}

	for (size_t fd = 0; fd < nconns; fd++)
		if (conns[fd].open)
			conn_close((int)fd);
	free(conns);
	free(again.v);
	free(again_next.v);
	close(epfd);
	close(lfd);
	close(sfd);
	if (reserve_fd >= 0)
		close(reserve_fd);
	return 0;
}
