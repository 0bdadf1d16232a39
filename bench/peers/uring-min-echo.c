/*
 * uring-min-echo.c: a minimal single-threaded io_uring TCP echo server in C (liburing >= 2.3).
 *
 * A reference peer for `ringlab-bench --peer`, written for ringlab: the completion model
 * in its plainest multishot form, independent of ringlab's own io_uring backend.
 *
 *   Usage: uring-min-echo PORT [ADDR]    (ADDR: IPv4, default 127.0.0.1; PORT 0 picks one)
 *
 * * One ring, SINGLE_ISSUER | DEFER_TASKRUN (plain flags where the kernel refuses them);
 *   one io_uring_submit_and_wait per loop turn.
 * * Multishot accept on the listener, re-armed when it ends (after 10 ms on EMFILE/ENFILE).
 * * Per connection one multishot recv into a provided-buffer ring (NBUFS x BUF_SIZE,
 *   group 0). Each received buffer is queued on its connection and sent straight from the
 *   buffer, one send in flight per connection so the echo stays in order (a short send sends
 *   the rest); the buffer goes back to the ring when its send completes.
 * * Backpressure: a connection holding HIGH_BUFS unsent buffers has its recv cancelled, and
 *   re-armed once its queue has drained below half of that. A recv that ends on ENOBUFS
 *   (the ring ran dry) is re-armed after a turn that gave buffers back.
 * * A connection is closed (close(2)) once its recv has ended on EOF or an error and no send
 *   is in flight; on EOF the queued data is sent first.
 * * SIGINT/SIGTERM are blocked and polled through a signalfd on the ring: exit status 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { SQ_ENTRIES = 4096, NBUFS = 1024, BUF_SIZE = 16384, HIGH_BUFS = 16, BACKLOG = 4096 };
enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CANCEL, OP_SIGNAL, OP_TIMER };

struct conn {
	int32_t head, tail; /* received buffers waiting to be sent, linked through buf_next */
	uint32_t qlen;      /* buffers in that queue */
	uint32_t sent;      /* bytes of the head buffer already sent */
	bool open, recv_armed, cancelling, sending, eof, failed, starved;
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static unsigned char *bufs;           /* NBUFS x BUF_SIZE */
static int32_t buf_next[NBUFS];       /* queue links, by buffer id */
static uint32_t buf_len[NBUFS];       /* bytes received into each buffer */
static unsigned buf_adds;             /* buffers given back this turn, not yet advanced */
static struct conn *conns;            /* indexed by descriptor */
static size_t nconns;
static int *starved;                  /* connections whose recv ended on ENOBUFS */
static size_t nstarved, starved_cap;
static int lfd = -1;

static uint64_t ud(enum op op, int fd) { return (uint64_t)op << 32 | (uint32_t)fd; }

static struct io_uring_sqe *get_sqe(void)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	if (!sqe) { /* SQ full: submit what is there and retry */
		io_uring_submit(&ring);
		sqe = io_uring_get_sqe(&ring);
		if (!sqe) {
			fprintf(stderr, "uring-min-echo: submission queue stuck\n");
			exit(1);
		}
	}
	return sqe;
}

static void arm_accept(void)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud(OP_ACCEPT, lfd));
}

static void arm_recv(int fd)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, ud(OP_RECV, fd));
	conns[fd].recv_armed = true;
}

static void start_send(int fd)
{
	struct conn *c = &conns[fd];
	int32_t bid = c->head;
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_send(sqe, fd, bufs + (size_t)bid * BUF_SIZE + c->sent,
			   buf_len[bid] - c->sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud(OP_SEND, fd));
	c->sending = true;
}

static void buf_return(int32_t bid)
{
	io_uring_buf_ring_add(br, bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
			      io_uring_buf_ring_mask(NBUFS), (int)buf_adds++);
}

/* Give back every queued buffer (no send may be in flight). */
static void drop_queue(struct conn *c)
{
	for (int32_t bid = c->head; bid >= 0; bid = buf_next[bid])
		buf_return(bid);
	c->head = c->tail = -1;
	c->qlen = 0;
}

static void cancel_recv(int fd)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_cancel64(sqe, ud(OP_RECV, fd), 0);
	io_uring_sqe_set_data64(sqe, ud(OP_CANCEL, fd));
	conns[fd].cancelling = true;
}

/* Close the connection, or re-arm its recv, as its state now calls for. */
static void settle(int fd)
{
	struct conn *c = &conns[fd];
	if (c->eof || c->failed) {
		if (c->failed && c->recv_armed && !c->cancelling)
			cancel_recv(fd);
		if (!c->recv_armed && !c->sending) {
			drop_queue(c);
			close(fd);
			c->open = false;
		}
	} else if (!c->recv_armed && !c->starved && c->qlen < HIGH_BUFS / 2) {
		arm_recv(fd);
	}
}

static void on_recv(int fd, int res, unsigned flags)
{
	struct conn *c = &conns[fd];
	if (!(flags & IORING_CQE_F_MORE))
		c->recv_armed = c->cancelling = false;
	if (res > 0) {
		int32_t bid = (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
		if (c->failed) {
			buf_return(bid);
			goto out;
		}
		buf_len[bid] = (uint32_t)res;
		buf_next[bid] = -1;
		if (c->tail >= 0)
			buf_next[c->tail] = bid;
		else
			c->head = bid;
		c->tail = bid;
		c->qlen++;
		if (!c->sending)
			start_send(fd);
		if (c->qlen >= HIGH_BUFS && c->recv_armed && !c->cancelling)
			cancel_recv(fd); /* backpressure: resumed by settle() */
	} else if (res == 0) {
		c->eof = true;
	} else if (res == -ENOBUFS) {
		if (!c->starved) {
			if (nstarved == starved_cap) {
				size_t cap = starved_cap ? starved_cap * 2 : 256;
				int *v = realloc(starved, cap * sizeof *v);
				if (!v) {
					c->failed = true;
					goto out;
				}
				starved = v;
				starved_cap = cap;
			}
			starved[nstarved++] = fd;
			c->starved = true;
		}
	} else if (res != -ECANCELED) {
		c->failed = true;
	}
out:
	if (!c->recv_armed)
		settle(fd);
}

static void on_send(int fd, int res)
{
	struct conn *c = &conns[fd];
	c->sending = false;
	if (res <= 0) {
		c->failed = true;
	} else if ((c->sent += (uint32_t)res) >= buf_len[c->head]) {
		int32_t bid = c->head;
		c->head = buf_next[bid];
		if (c->head < 0)
			c->tail = -1;
		c->qlen--;
		c->sent = 0;
		buf_return(bid);
	}
	if (!c->failed && c->qlen)
		start_send(fd);
	settle(fd);
}

static void on_accept(int res, unsigned flags)
{
	static bool warned;
	if (res >= 0) {
		int fd = res, one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if ((size_t)fd >= nconns) {
			size_t n = nconns ? nconns : 1024;
			while (n <= (size_t)fd)
				n *= 2;
			struct conn *t = realloc(conns, n * sizeof *t);
			if (!t) {
				close(fd);
				goto rearm;
			}
			memset(t + nconns, 0, (n - nconns) * sizeof *t);
			conns = t;
			nconns = n;
		}
		conns[fd] = (struct conn){ .head = -1, .tail = -1, .open = true };
		arm_recv(fd);
	} else if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
		if (!warned) {
			fprintf(stderr, "uring-min-echo: accept: %s (pausing)\n", strerror(-res));
			warned = true;
		}
		if (!(flags & IORING_CQE_F_MORE)) { /* try again in 10 ms rather than spin */
			static struct __kernel_timespec ts = { .tv_nsec = 10 * 1000 * 1000 };
			struct io_uring_sqe *sqe = get_sqe();
			io_uring_prep_timeout(sqe, &ts, 0, 0);
			io_uring_sqe_set_data64(sqe, ud(OP_TIMER, 0));
			return;
		}
	}
rearm:
	if (!(flags & IORING_CQE_F_MORE))
		arm_accept();
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
	int sfd = -1, one = 1;
	socklen_t salen = sizeof sa;
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
	    (lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, BACKLOG) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0) {
		fprintf(stderr, "uring-min-echo: %s:%d: %s\n", host, port, strerror(errno));
		return 1;
	}

	struct io_uring_params p = {
		.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
			 IORING_SETUP_DEFER_TASKRUN,
		.cq_entries = 2 * SQ_ENTRIES,
	};
	int ret = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
	if (ret == -EINVAL) { /* kernel older than 6.1 */
		p = (struct io_uring_params){ .flags = IORING_SETUP_CQSIZE, .cq_entries = 2 * SQ_ENTRIES };
		ret = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
	}
	if (ret < 0) {
		fprintf(stderr, "uring-min-echo: io_uring_queue_init: %s\n", strerror(-ret));
		return 1;
	}

	size_t ring_bytes = NBUFS * sizeof(struct io_uring_buf);
	br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bufs = mmap(NULL, (size_t)NBUFS * BUF_SIZE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (br == MAP_FAILED || bufs == MAP_FAILED) {
		fprintf(stderr, "uring-min-echo: mmap: %s\n", strerror(errno));
		return 1;
	}
	struct io_uring_buf_reg reg = {
		.ring_addr = (uintptr_t)br, .ring_entries = NBUFS, .bgid = 0,
	};
	if ((ret = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) {
		fprintf(stderr, "uring-min-echo: io_uring_register_buf_ring: %s\n", strerror(-ret));
		return 1;
	}
	io_uring_buf_ring_init(br);
	for (int32_t bid = 0; bid < NBUFS; bid++)
		buf_return(bid);
	io_uring_buf_ring_advance(br, (int)buf_adds);
	buf_adds = 0;

	arm_accept();
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_poll_add(sqe, sfd, POLLIN);
	io_uring_sqe_set_data64(sqe, ud(OP_SIGNAL, sfd));
	printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
	fflush(stdout);

	bool running = true;
	while (running) {
		ret = io_uring_submit_and_wait(&ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			fprintf(stderr, "uring-min-echo: io_uring_submit_and_wait: %s\n", strerror(-ret));
			return 1;
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			uint64_t data = io_uring_cqe_get_data64(cqe);
			int fd = (int)(uint32_t)data;
			switch ((enum op)(data >> 32)) {
			case OP_ACCEPT: on_accept(cqe->res, cqe->flags); break;
			case OP_RECV: on_recv(fd, cqe->res, cqe->flags); break;
			case OP_SEND: on_send(fd, cqe->res); break;
			case OP_TIMER: arm_accept(); break;
			case OP_SIGNAL: running = false; break;
			case OP_CANCEL: break;
			}
			seen++;
		}
		io_uring_cq_advance(&ring, seen);
		if (buf_adds) { /* buffers came back: publish them, retry the starved recvs */
			io_uring_buf_ring_advance(br, (int)buf_adds);
			buf_adds = 0;
			size_t n = nstarved;
			nstarved = 0;
			for (size_t i = 0; i < n; i++) {
				struct conn *c = &conns[starved[i]];
				if (c->open && c->starved) {
					c->starved = false;
					settle(starved[i]);
				}
			}
		}
	}

	for (size_t fd = 0; fd < nconns; fd++)
		if (conns[fd].open)
			close((int)fd);
	io_uring_queue_exit(&ring);
	munmap(bufs, (size_t)NBUFS * BUF_SIZE);
	munmap(br, ring_bytes);
	free(conns);
	free(starved);
	close(lfd);
	close(sfd);
	return 0;
}
