/*
 * cdaemon: a cachefiles on-demand daemon in C, serving EROFS blobs to the kernel.
 *
 * The second daemon of the harness, shaped unlike guest_scripts/daemon.py on purpose, so that
 * the kernel meets both:
 *
 *  - A supervisor process opens /dev/cachefiles, binds the cache (`dir`, `tag`, `bind
 *    ondemand`, as keeper.open_cache does) and keeps the device fd for its whole life. It never
 *    reads the device. It forks a worker, and when the worker dies (whatever killed it) it forks
 *    the next one, counting incarnations from 1.
 *
 *  - The supervisor keeps every anon fd. A worker sends it each anon fd over a Unix socketpair
 *    (SCM_RIGHTS) as soon as it has read the OPEN, says when it answered that OPEN, and when a
 *    CLOSE closed the object (the supervisor closes its copy too). A new worker inherits the
 *    device fd by fork and is handed every anon fd held, with its object id, msg_id and whether
 *    its OPEN was answered, before it serves: it first answers (`copen`) every OPEN a dead
 *    worker read and never answered, then writes `restore` (so that the kernel delivers again
 *    what the dead one read and never answered), then serves. --no-restore makes the negative
 *    control: a daemon that never writes `restore`.
 *
 *  - A worker serves from --threads pthreads that each poll(2) the device with no timeout and
 *    read(2) it with no lock between them: the kernel must hand each request to one thread, and
 *    must wake a sleeping one for every request (a kernel that forgets a wake-up leaves it
 *    asleep, and the readers' watchdog reports the stall). What the threads share, the table of
 *    anon fds by object id and the blobs, is under a mutex; the device is not.
 *
 *  - The supervisor lets go of the anon fds of objects the kernel is done with: a CLOSE is ended
 *    at its delivery, so a worker killed after reading one and before telling the supervisor
 *    leaves the supervisor's copy open for good, and that copy pins the object, its cookie and
 *    its fscache volume (a later mount of the volume then waits for it, uninterruptibly). At
 *    each handover and every PRUNE_INTERVAL_MS while it supervises, it reads the kernel's cookie
 *    list (--cookies-file) and closes every fd whose cookie is listed as dropped or not listed,
 *    and tells the worker, which closes its own copy (see prune()).
 *
 *  - SIGUSR1 to a worker (the close fault: the harness's `close-fds`) makes it close the anon
 *    fd of one live object, chosen at random among those answered and idle, unasked: the kernel
 *    marks the object closed and reopens it (a new OPEN) on its next READ. The signal is never
 *    handled: blocked in every thread, it is taken by a closer thread through a signalfd. Since
 *    the supervisor keeps a copy of the fd, the closer has it close that copy first and waits
 *    for its word, then closes its own, the last: the kernel releases the fd in the worker (see
 *    close_one()). The closer is also the worker's reader of the supervisor's channel, once the
 *    handover is done.
 *
 * The log is JSON lines appended to --log, one write(2) a line, so that the lines of threads and
 * processes never interleave; it is a cross-check for the host's judge, which reads the kernel's
 * own trace first.
 *
 * Built by harness/guest/cdaemon.py: cc -std=c11 -Wall -Wextra -Werror -O2 -pthread cdaemon.c msg.c
 */
#define _GNU_SOURCE

#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096                /* the cache file is written with O_DIRECT underneath */
#define CHUNK (1024 * 1024)       /* a READ is copied through a buffer of this size */
#define MAX_IMAGES 64
#define MAX_THREADS 64
#define NAME_MAX_LEN 256          /* a blob name with its NUL (fscache keys are 255 at most) */
#define READ_ERROR_PAUSE_MS 100   /* after a read(2) error that may repeat: no hot loop */
#define FORK_RETRY_MS 100         /* the least wait before a worker is forked again */
#define LINE_SIZE 8192            /* a log line: the largest message's keys, escaped, fit */
#define CLOSE_WORD_TIMEOUT_MS 5000 /* the close fault's wait for the supervisor's word */
#define PRUNE_INTERVAL_MS 500     /* the supervisor reads the kernel's cookie list this often */
#define COOKIES_FILE "/proc/fs/netfs/cookies"
#define COOKIES_MAX (64u << 20)   /* a cookie list longer than this is not read */

/* How a worker ends (its exit status; signals aside). */
enum {
	WORKER_DEVICE_DEAD = 1, /* the device failed: the cache is dead, the supervisor stops */
	WORKER_FAILED = 3,      /* it could not start: the supervisor forks the next one */
};

/* The exit statuses of cdaemon. */
enum {
	EXIT_OK = 0,     /* stopped by SIGTERM or SIGINT */
	EXIT_FAILED = 1, /* the cache could not be bound, or died */
	EXIT_USAGE = 2,  /* a bad or missing option */
};

static const char USAGE[] =
	"usage: cdaemon --cache-dir DIR --tag TAG --image NAME=PATH [--image NAME=PATH]... --log FILE\n"
	"               [--pid-file FILE] [--worker-pid-file FILE] [--threads N]\n"
	"               [--restart-delay-ms MS] [--read-delay-ms MS] [--no-restore] [--device-fd FD]\n"
	"               [--cookies-file PATH]\n"
	"\n"
	"A cachefiles on-demand daemon serving EROFS blobs: a supervisor binds the cache, keeps\n"
	"/dev/cachefiles and every anon fd across the deaths of the worker it forks, and forks the\n"
	"next worker when one dies; a worker answers the kernel's requests from several threads.\n"
	"\n"
	"  --cache-dir DIR          the cache directory (`dir DIR`)\n"
	"  --tag TAG                the cache's tag (`tag TAG`)\n"
	"  --image NAME=PATH        the blob of image NAME: a cookie `NAME.<anything>` is served\n"
	"                           from PATH (repeatable; an unknown image's OPEN gets -ENOENT)\n"
	"  --log FILE               JSON lines appended there, one a event\n"
	"  --pid-file FILE          the supervisor's pid, written there\n"
	"  --worker-pid-file FILE   the current worker's pid, rewritten (atomically) at each fork\n"
	"  --threads N              threads serving the device in a worker, 1 to 64 (default 3)\n"
	"  --restart-delay-ms MS    the wait between a worker's death and the next fork (default 0)\n"
	"  --read-delay-ms MS       a pause before each READ is answered (default 0)\n"
	"  --no-restore             never write `restore` (the negative control)\n"
	"  --device-fd FD           an inherited, open fd standing for /dev/cachefiles (tests); the\n"
	"                           bind commands are written to it all the same\n"
	"  --cookies-file PATH      the kernel's cookie list, read to let go of the anon fds of\n"
	"                           dropped cookies (default " COOKIES_FILE "; tests: a stand-in)\n"
	"  --help                   this text\n"
	"\n"
	"SIGUSR1 to the worker (its pid in --worker-pid-file) closes the anon fd of one idle object,\n"
	"as if the daemon lost it: the kernel reopens the object at its next READ.\n"
	"\n"
	"Exit status: 0 stopped by SIGTERM or SIGINT, 1 the cache could not be bound or died,\n"
	"2 a bad or missing option.\n";

/* ---- options ----------------------------------------------------------------------------- */

struct image {
	char name[NAME_MAX_LEN];
	const char *path;
};

struct options {
	const char *cache_dir;
	const char *tag;
	const char *log_path;
	const char *pid_file;
	const char *worker_pid_file;
	struct image images[MAX_IMAGES];
	size_t n_images;
	unsigned threads;
	unsigned restart_delay_ms;
	unsigned read_delay_ms;
	bool no_restore;
	int device_fd; /* -1: open /dev/cachefiles */
	const char *cookies_file;
};

/* One line on stderr, and the usage exit status. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	fprintf(stderr, "cdaemon: %s (see --help)\n", text);
	return EXIT_USAGE;
}

static bool parse_unsigned(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		return false;
	*out = v;
	return true;
}

static int add_image(struct options *o, const char *spec)
{
	const char *eq = strchr(spec, '=');
	size_t len;

	if (eq == NULL || eq == spec || eq[1] == '\0')
		return usage_error("--image wants NAME=PATH, not '%s'", spec);
	len = (size_t)(eq - spec);
	if (len >= NAME_MAX_LEN || memchr(spec, '.', len) != NULL)
		return usage_error("--image: a NAME has no '.' and fewer than %d characters: '%s'", NAME_MAX_LEN, spec);
	if (o->n_images == MAX_IMAGES)
		return usage_error("--image: at most %d images", MAX_IMAGES);
	for (size_t i = 0; i < o->n_images; i++)
		if (strlen(o->images[i].name) == len && memcmp(o->images[i].name, spec, len) == 0)
			return usage_error("--image: image '%.*s' given twice", (int)len, spec);
	memcpy(o->images[o->n_images].name, spec, len);
	o->images[o->n_images].name[len] = '\0';
	o->images[o->n_images].path = eq + 1;
	o->n_images++;
	return 0;
}

/* 0: run; 1: --help was printed; EXIT_USAGE: an error was printed. */
static int parse_options(int argc, char **argv, struct options *o)
{
	memset(o, 0, sizeof(*o));
	o->threads = 3;
	o->device_fd = -1;
	o->cookies_file = COOKIES_FILE;
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *eq;
		char name[32];
		const char *value = NULL;
		unsigned long n;
		int err;

		if (strncmp(arg, "--", 2) != 0)
			return usage_error("unexpected argument '%s'", arg);
		eq = strchr(arg, '=');
		if (eq != NULL) {
			if ((size_t)(eq - arg) >= sizeof(name))
				return usage_error("unknown option '%s'", arg);
			memcpy(name, arg, (size_t)(eq - arg));
			name[eq - arg] = '\0';
			value = eq + 1;
		} else {
			if (strlen(arg) >= sizeof(name))
				return usage_error("unknown option '%s'", arg);
			strcpy(name, arg);
		}
		if (strcmp(name, "--help") == 0 || strcmp(name, "--no-restore") == 0) {
			if (value != NULL)
				return usage_error("%s takes no value", name);
			if (strcmp(name, "--help") == 0) {
				fputs(USAGE, stdout);
				return 1;
			}
			o->no_restore = true;
			continue;
		}
		if (strcmp(name, "--cache-dir") != 0 && strcmp(name, "--tag") != 0 &&
		    strcmp(name, "--image") != 0 && strcmp(name, "--log") != 0 &&
		    strcmp(name, "--pid-file") != 0 && strcmp(name, "--worker-pid-file") != 0 &&
		    strcmp(name, "--threads") != 0 && strcmp(name, "--restart-delay-ms") != 0 &&
		    strcmp(name, "--read-delay-ms") != 0 && strcmp(name, "--device-fd") != 0 &&
		    strcmp(name, "--cookies-file") != 0)
			return usage_error("unknown option '%s'", arg);
		if (value == NULL) {
			if (i + 1 == argc)
				return usage_error("%s needs a value", name);
			value = argv[++i];
		}
		if (strcmp(name, "--cache-dir") == 0) {
			o->cache_dir = value;
		} else if (strcmp(name, "--tag") == 0) {
			o->tag = value;
		} else if (strcmp(name, "--log") == 0) {
			o->log_path = value;
		} else if (strcmp(name, "--pid-file") == 0) {
			o->pid_file = value;
		} else if (strcmp(name, "--worker-pid-file") == 0) {
			o->worker_pid_file = value;
		} else if (strcmp(name, "--cookies-file") == 0) {
			o->cookies_file = value;
		} else if (strcmp(name, "--image") == 0) {
			if ((err = add_image(o, value)) != 0)
				return err;
		} else if (strcmp(name, "--threads") == 0) {
			if (!parse_unsigned(value, MAX_THREADS, &n) || n == 0)
				return usage_error("--threads wants 1 to %d, not '%s'", MAX_THREADS, value);
			o->threads = (unsigned)n;
		} else if (strcmp(name, "--restart-delay-ms") == 0 || strcmp(name, "--read-delay-ms") == 0) {
			if (!parse_unsigned(value, 3600 * 1000, &n))
				return usage_error("%s wants milliseconds, 0 to 3600000, not '%s'", name, value);
			if (strcmp(name, "--restart-delay-ms") == 0)
				o->restart_delay_ms = (unsigned)n;
			else
				o->read_delay_ms = (unsigned)n;
		} else { /* --device-fd */
			if (!parse_unsigned(value, INT_MAX, &n))
				return usage_error("--device-fd wants an fd number, not '%s'", value);
			o->device_fd = (int)n;
		}
	}
	if (o->cache_dir == NULL || *o->cache_dir == '\0')
		return usage_error("--cache-dir is required");
	if (o->tag == NULL || *o->tag == '\0')
		return usage_error("--tag is required");
	if (o->log_path == NULL || *o->log_path == '\0')
		return usage_error("--log is required");
	if (o->n_images == 0)
		return usage_error("--image is required");
	if (*o->cookies_file == '\0')
		return usage_error("--cookies-file wants a path");
	if (o->device_fd >= 0 && fcntl(o->device_fd, F_GETFD) < 0)
		return usage_error("--device-fd %d is not an open fd", o->device_fd);
	return 0;
}

/* ---- the log ----------------------------------------------------------------------------- */

/* Who writes, fixed once a process knows who it is; read-only while threads run. */
struct log {
	int fd;
	const char *who;
	unsigned incarnation;
	pid_t pid;
};

/* A line being built. A field that does not fit is left out, and the line says so. */
struct line {
	char buf[LINE_SIZE];
	size_t len;
	bool truncated;
};

/* Room kept for `,"truncated":true}` and the newline. */
#define LINE_RESERVE 24

static bool line_put(struct line *l, const char *s, size_t n)
{
	if (n > LINE_SIZE - LINE_RESERVE - l->len)
		return false;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	return true;
}

static bool line_printf(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool line_printf(struct line *l, const char *fmt, ...)
{
	char text[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return n >= 0 && (size_t)n < sizeof(text) && line_put(l, text, (size_t)n);
}

/* A JSON string of @n bytes: quotes, backslashes, control characters and every byte above
 * 0x7f escaped (as \u00XX: the line stays ASCII, valid JSON whatever the bytes were). */
static bool line_json_string(struct line *l, const char *s, size_t n)
{
	if (!line_put(l, "\"", 1))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		bool ok;

		if (c == '"' || c == '\\')
			ok = line_put(l, "\\", 1) && line_put(l, (const char *)&c, 1);
		else if (c < 0x20 || c > 0x7e)
			ok = line_printf(l, "\\u%04x", c);
		else
			ok = line_put(l, (const char *)&c, 1);
		if (!ok)
			return false;
	}
	return line_put(l, "\"", 1);
}

/* Each field is all or nothing. */
static void line_strn(struct line *l, const char *key, const char *s, size_t n)
{
	size_t mark = l->len;

	if (!(line_printf(l, ",\"%s\":", key) && line_json_string(l, s, n))) {
		l->len = mark;
		l->truncated = true;
	}
}

static void line_str(struct line *l, const char *key, const char *s)
{
	line_strn(l, key, s, strlen(s));
}

static void line_u64(struct line *l, const char *key, uint64_t v)
{
	if (!line_printf(l, ",\"%s\":%" PRIu64, key, v))
		l->truncated = true;
}

static void line_i64(struct line *l, const char *key, int64_t v)
{
	if (!line_printf(l, ",\"%s\":%" PRId64, key, v))
		l->truncated = true;
}

static void line_bool(struct line *l, const char *key, bool v)
{
	if (!line_printf(l, ",\"%s\":%s", key, v ? "true" : "false"))
		l->truncated = true;
}

static void line_begin(struct line *l, const struct log *log, const char *event)
{
	struct timespec now;

	if (clock_gettime(CLOCK_REALTIME, &now) != 0)
		now.tv_sec = now.tv_nsec = 0;
	l->len = 0;
	l->truncated = false;
	line_printf(l, "{\"t\":%lld.%06ld", (long long)now.tv_sec, now.tv_nsec / 1000);
	line_str(l, "event", event);
	line_str(l, "who", log->who);
	line_u64(l, "incarnation", log->incarnation);
	line_i64(l, "pid", log->pid);
}

/* The line, in one write(2) to a file opened O_APPEND: lines never interleave. */
static void log_emit(const struct log *log, struct line *l)
{
	ssize_t n;

	static const char truncated[] = ",\"truncated\":true";

	/* line_put kept LINE_RESERVE bytes for these */
	if (l->truncated) {
		memcpy(l->buf + l->len, truncated, sizeof(truncated) - 1);
		l->len += sizeof(truncated) - 1;
	}
	memcpy(l->buf + l->len, "}\n", 2);
	l->len += 2;
	do
		n = write(log->fd, l->buf, l->len);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)l->len) /* nothing better to do than say so where someone may look */
		fprintf(stderr, "cdaemon: log write failed (%s): %.*s", n < 0 ? strerror(errno) : "short",
			(int)l->len, l->buf);
}

/* An error event: @why says what failed, @err its errno (0: none). */
static void log_error(const struct log *log, const char *why, int err)
{
	struct line l;

	line_begin(&l, log, "error");
	line_str(&l, "why", why);
	if (err != 0)
		line_i64(&l, "errno", err);
	log_emit(log, &l);
}

/* An error event about a request. */
static void log_request_error(const struct log *log, const struct msg *m, const char *why, int err)
{
	struct line l;

	line_begin(&l, log, "error");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", msg_op_name(m->op));
	line_str(&l, "why", why);
	if (err != 0)
		line_i64(&l, "errno", err);
	log_emit(log, &l);
}

static void log_exit(const struct log *log, const char *why, int status)
{
	struct line l;

	line_begin(&l, log, "exit");
	line_str(&l, "why", why);
	line_i64(&l, "status", status);
	log_emit(log, &l);
}

/* ---- small helpers ----------------------------------------------------------------------- */

static void sleep_ms(unsigned ms)
{
	struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

	while (nanosleep(&t, &t) != 0 && errno == EINTR)
		;
}

/* `text` to @path, atomically (a temporary file renamed over it): never seen half written.
 * Returns 0 or an errno. */
static int write_atomically(const char *path, const char *text)
{
	char tmp[PATH_MAX];
	size_t len = strlen(text);
	ssize_t n;
	int fd, err = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return errno;
	n = write(fd, text, len);
	if (n != (ssize_t)len)
		err = n < 0 ? errno : EIO;
	if (close(fd) != 0 && err == 0)
		err = errno;
	if (err == 0 && rename(tmp, path) != 0)
		err = errno;
	if (err != 0)
		unlink(tmp);
	return err;
}

static int write_pid_file(const char *path, pid_t pid)
{
	char text[32];

	snprintf(text, sizeof(text), "%d\n", (int)pid);
	return write_atomically(path, text);
}

/* A command to the device: 0, or the errno it failed with (a short write counts as EIO: the
 * kernel takes a command whole or not at all). */
static int device_command(int device_fd, const char *cmd, size_t len)
{
	ssize_t n;

	do
		n = write(device_fd, cmd, len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno;
	return (size_t)n == len ? 0 : EIO;
}

/* Errors after which nothing more will come from the device: the cache is dead, the fd gone
 * (EPIPE, ECONNRESET: what a socket standing for the device in a test says). */
static bool device_dead_errno(int err)
{
	return err == EIO || err == ENODEV || err == ENXIO || err == EBADF || err == EPIPE || err == ECONNRESET;
}

/* ---- the supervision channel ------------------------------------------------------------- */

/*
 * One SOCK_SEQPACKET message each way, some with an fd (SCM_RIGHTS):
 *   worker -> supervisor: DEPOSIT (fd) an OPEN's anon fd, as soon as the OPEN is read;
 *                         ANSWERED its copen was accepted; CLOSED the worker closes it (with
 *                         `reply`: the close fault, which waits for the CLOSED below)
 *   supervisor -> worker: HELD (fd) an anon fd kept across a death, then END; after the
 *                         handover: CLOSED (only as the answer to a CLOSED with `reply`) its
 *                         copy is closed, `held` whether it had one; PRUNED its copy of an
 *                         object (object id and msg_id) whose cookie the kernel dropped is
 *                         closed: the worker closes its own
 */
enum chan_kind {
	CHAN_DEPOSIT = 1,
	CHAN_ANSWERED,
	CHAN_CLOSED,
	CHAN_HELD,
	CHAN_END,
	CHAN_PRUNED,
};

struct chan_msg {
	uint32_t kind;
	uint32_t object_id;
	uint32_t msg_id;
	uint32_t answered;
	uint32_t reply; /* CLOSED to the supervisor: answer with CLOSED once the copy is closed */
	uint32_t held;  /* CLOSED to the worker: the supervisor had a copy (and closed it) */
	char cookie[NAME_MAX_LEN]; /* the blob name, NUL-terminated ("" if it had none) */
};

/* @m as it is, with @fd (< 0: none): 0, or an errno. Never raises SIGPIPE. @flags: more
 * sendmsg(2) flags (MSG_DONTWAIT: EAGAIN rather than a wait for a peer that does not read). */
static int chan_send_msg(int sock, const struct chan_msg *m, int fd, int flags)
{
	struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof(*m)};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&control, 0, sizeof(control));
		mh.msg_control = control.buf;
		mh.msg_controllen = sizeof(control.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno;
	return n == (ssize_t)sizeof(*m) ? 0 : EPROTO;
}

/* 0, or an errno. @fd < 0: none. */
static int chan_send(int sock, uint32_t kind, uint32_t object_id, uint32_t msg_id, bool answered,
		     const char *cookie, int fd)
{
	struct chan_msg m;

	memset(&m, 0, sizeof(m));
	m.kind = kind;
	m.object_id = object_id;
	m.msg_id = msg_id;
	m.answered = answered;
	if (cookie != NULL)
		snprintf(m.cookie, sizeof(m.cookie), "%s", cookie);
	return chan_send_msg(sock, &m, fd, 0);
}

/* 1: a message, its fd in *@fd (-1: none); 0: the other end is gone; -1: an error (errno). */
static int chan_recv(int sock, struct chan_msg *m, int *fd)
{
	struct iovec iov = {.iov_base = m, .iov_len = sizeof(*m)};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 4)];
	} control;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			    .msg_controllen = sizeof(control.buf)};
	ssize_t n;

	*fd = -1;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int got;

			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*fd < 0)
				*fd = got;
			else
				close(got); /* one fd a message: any other is not ours to keep */
		}
	}
	if (n == 0 && *fd < 0)
		return 0;
	if (n != (ssize_t)sizeof(*m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		errno = EPROTO;
		return -1;
	}
	m->cookie[sizeof(m->cookie) - 1] = '\0';
	return 1;
}

/* ==== the worker ============================================================================ */

/* An image's blob, opened by the first OPEN that needs it; never closed while the worker lives. */
struct blob {
	bool tried;
	int fd;
	int64_t size;
	int err; /* the errno its open failed with (0: open) */
};

/* An object the kernel opened, by its anon fd. Allocated on its own, so that a READ can hold
 * (pin) it while the table changes; freed, and its fd closed, when it is closed and unpinned. */
struct object {
	uint32_t object_id;
	uint32_t msg_id; /* of the OPEN that gave its fd: with the id, which fd a PRUNED means */
	int fd;
	struct blob *blob;
	unsigned busy; /* READs being answered through it */
	bool closing;  /* out of the table: the last READ done closes its fd */
	bool answered; /* its copen was accepted: the close fault may take it */
	char cookie[NAME_MAX_LEN]; /* its blob name */
};

/* Object ids whose fd the worker closed unasked, the latest last, with who made it (the close
 * fault, or the supervisor's prune): a READ or CLOSE that comes for one is told apart from one
 * for an id never seen. An id leaves when an OPEN brings it again. */
#define CLOSED_MAX 64
#define BY_CLOSE_FAULT "close_fd"
#define BY_PRUNE "pruned"

struct closed_id {
	uint32_t object_id;
	const char *by; /* BY_CLOSE_FAULT or BY_PRUNE */
};

struct worker {
	const struct options *opt;
	struct log log;
	int device_fd;
	int chan; /* to the supervisor */
	pthread_mutex_t lock; /* objects and blobs; never held around a device call */
	struct object **objects;
	size_t n_objects, cap_objects;
	struct blob blobs[MAX_IMAGES]; /* by the index of the image in opt->images */
	struct closed_id closed[CLOSED_MAX]; /* under the lock */
	size_t n_closed;
	/*
	 * Shared by each serving thread from its read(2) to the pin of the READ it read (never
	 * around poll(2), nor while a request is answered: the threads never wait for one another
	 * here), exclusive for the close fault: while the closer holds it, no READ is between its
	 * delivery and its pin, so an idle object is one no READ delivered so far can want. A read
	 * of /dev/cachefiles never waits (no request: 0), so the closer never waits long; a
	 * stand-in for the device must not block either (tests: a non-blocking socket).
	 */
	pthread_rwlock_t gate;
	uint64_t rng; /* the closer's choice (only the closer thread uses it) */
	int sigfd;    /* SIGUSR1, read by the closer */
};

struct thread_ctx {
	struct worker *w;
	pthread_t tid;
	uint8_t *buf; /* CHUNK bytes, ALIGN-aligned: O_DIRECT underneath the anon fd */
};

static void lock(struct worker *w)
{
	int err = pthread_mutex_lock(&w->lock);

	if (err != 0) {
		log_error(&w->log, "pthread_mutex_lock", err);
		_exit(WORKER_FAILED);
	}
}

static void unlock(struct worker *w)
{
	int err = pthread_mutex_unlock(&w->lock);

	if (err != 0) {
		log_error(&w->log, "pthread_mutex_unlock", err);
		_exit(WORKER_FAILED);
	}
}

static void gate_shared(struct worker *w)
{
	int err = pthread_rwlock_rdlock(&w->gate);

	if (err != 0) {
		log_error(&w->log, "pthread_rwlock_rdlock", err);
		_exit(WORKER_FAILED);
	}
}

static void gate_exclusive(struct worker *w)
{
	int err = pthread_rwlock_wrlock(&w->gate);

	if (err != 0) {
		log_error(&w->log, "pthread_rwlock_wrlock", err);
		_exit(WORKER_FAILED);
	}
}

static void gate_leave(struct worker *w)
{
	int err = pthread_rwlock_unlock(&w->gate);

	if (err != 0) {
		log_error(&w->log, "pthread_rwlock_unlock", err);
		_exit(WORKER_FAILED);
	}
}

/* The device is gone: no thread can do anything more. */
static void worker_device_dead(struct worker *w, const char *why, int err)
{
	log_error(&w->log, why, err);
	log_exit(&w->log, "device dead", WORKER_DEVICE_DEAD);
	_exit(WORKER_DEVICE_DEAD);
}

/* Tell the supervisor (ANSWERED, CLOSED); a failure is logged, and serving goes on. */
static void tell_supervisor(struct worker *w, uint32_t kind, uint32_t object_id)
{
	int err = chan_send(w->chan, kind, object_id, 0, false, NULL, -1);

	if (err != 0)
		log_error(&w->log, kind == CHAN_ANSWERED ? "tell supervisor: answered" : "tell supervisor: closed", err);
}

/*
 * The blob of a blob name (`<image>.<anything>`): *@blob, or NULL for an image we do not serve.
 * Returns 0, or the errno the image's blob failed to open with.
 */
static int blob_for(struct worker *w, const char *name, struct blob **blob)
{
	size_t len = msg_image_len(name);
	int err = 0;

	*blob = NULL;
	for (size_t i = 0; i < w->opt->n_images; i++) {
		struct blob *b = &w->blobs[i];

		if (strlen(w->opt->images[i].name) != len || memcmp(w->opt->images[i].name, name, len) != 0)
			continue;
		lock(w);
		if (!b->tried) {
			struct stat st;

			b->tried = true;
			b->fd = open(w->opt->images[i].path, O_RDONLY | O_CLOEXEC);
			if (b->fd < 0) {
				b->err = errno;
			} else if (fstat(b->fd, &st) != 0) {
				b->err = errno;
				close(b->fd);
				b->fd = -1;
			} else {
				b->size = st.st_size;
			}
		}
		err = b->err;
		if (err == 0)
			*blob = b;
		unlock(w);
		return err;
	}
	return 0;
}

/* Index of the object in the table, or -1. Under the lock. */
static ssize_t object_index(struct worker *w, uint32_t object_id)
{
	for (size_t i = 0; i < w->n_objects; i++)
		if (w->objects[i]->object_id == object_id)
			return (ssize_t)i;
	return -1;
}

/* Out of the table: its fd is returned to be closed, or -1 if a READ still uses it (the last
 * one closes it: an fd number closed under a READ could be another object's by its write).
 * Under the lock. */
static int object_detach(struct worker *w, size_t i)
{
	struct object *o = w->objects[i];
	int fd = -1;

	w->objects[i] = w->objects[--w->n_objects];
	if (o->busy > 0) {
		o->closing = true;
	} else {
		fd = o->fd;
		free(o);
	}
	return fd;
}

/* Who closed @object_id's fd unasked (BY_CLOSE_FAULT, BY_PRUNE), NULL if nobody did (or an
 * OPEN brought the id again). Under the lock. */
static const char *closed_by(const struct worker *w, uint32_t object_id)
{
	for (size_t i = 0; i < w->n_closed; i++)
		if (w->closed[i].object_id == object_id)
			return w->closed[i].by;
	return NULL;
}

/* @object_id into the list of ids closed unasked, closed @by; @by NULL: out of it. Under the lock. */
static void closed_mark(struct worker *w, uint32_t object_id, const char *by)
{
	size_t i = 0;

	while (i < w->n_closed && w->closed[i].object_id != object_id)
		i++;
	if (i < w->n_closed) { /* out, the rest moved down: the oldest stays first */
		memmove(&w->closed[i], &w->closed[i + 1], (w->n_closed - i - 1) * sizeof(w->closed[0]));
		w->n_closed--;
	}
	if (by == NULL)
		return;
	if (w->n_closed == CLOSED_MAX) { /* the oldest forgotten */
		memmove(&w->closed[0], &w->closed[1], (CLOSED_MAX - 1) * sizeof(w->closed[0]));
		w->n_closed--;
	}
	w->closed[w->n_closed].object_id = object_id;
	w->closed[w->n_closed].by = by;
	w->n_closed++;
}

/* A new object in the table (@answered: its copen accepted already, an object handed over). An
 * object id already there (the kernel gives an id out again only once its anon fd was released:
 * never, while we hold it) is logged and its entry closed. Returns 0 or ENOMEM. */
static int object_add(struct worker *w, uint32_t object_id, uint32_t msg_id, int fd, struct blob *blob,
		      const char *cookie, bool answered)
{
	struct object *o = calloc(1, sizeof(*o));
	int stale_fd = -1;
	ssize_t old;

	if (o == NULL)
		return ENOMEM;
	o->object_id = object_id;
	o->msg_id = msg_id;
	o->fd = fd;
	o->blob = blob;
	o->answered = answered;
	snprintf(o->cookie, sizeof(o->cookie), "%s", cookie);
	lock(w);
	closed_mark(w, object_id, NULL); /* a reopen's OPEN may bring the id again */
	if (w->n_objects == w->cap_objects) {
		size_t cap = w->cap_objects ? 2 * w->cap_objects : 64;
		struct object **grown = realloc(w->objects, cap * sizeof(*grown));

		if (grown == NULL) {
			unlock(w);
			free(o);
			return ENOMEM;
		}
		w->objects = grown;
		w->cap_objects = cap;
	}
	old = object_index(w, object_id);
	if (old >= 0)
		stale_fd = object_detach(w, (size_t)old);
	w->objects[w->n_objects++] = o;
	unlock(w);
	if (old >= 0) {
		struct line l;

		line_begin(&l, &w->log, "error");
		line_u64(&l, "object_id", object_id);
		line_str(&l, "why", "object id already in the table: the old entry closed");
		log_emit(&w->log, &l);
		if (stale_fd >= 0 && stale_fd != fd)
			close(stale_fd);
	}
	return 0;
}

/* The object, pinned for a READ; NULL if we hold no fd for it. */
static struct object *object_pin(struct worker *w, uint32_t object_id)
{
	struct object *o = NULL;
	ssize_t i;

	lock(w);
	i = object_index(w, object_id);
	if (i >= 0) {
		o = w->objects[i];
		o->busy++;
	}
	unlock(w);
	return o;
}

static void object_unpin(struct worker *w, struct object *o)
{
	int fd = -1;

	lock(w);
	if (--o->busy == 0 && o->closing) {
		fd = o->fd;
		free(o);
	}
	unlock(w);
	if (fd >= 0)
		close(fd);
}

/* Its copen accepted: from now on the close fault may take it. */
static void object_answered(struct worker *w, uint32_t object_id)
{
	ssize_t i;

	lock(w);
	if ((i = object_index(w, object_id)) >= 0)
		w->objects[i]->answered = true;
	unlock(w);
}

/* Closes the object's fd (now, or when its last READ is done). False if it was not in the table. */
static bool object_close(struct worker *w, uint32_t object_id)
{
	ssize_t i;
	int fd = -1;

	lock(w);
	i = object_index(w, object_id);
	if (i >= 0)
		fd = object_detach(w, (size_t)i);
	unlock(w);
	if (fd >= 0)
		close(fd);
	return i >= 0;
}

/* Writes `copen`: 0 or the errno the kernel refused it with. */
static int write_copen(struct worker *w, uint32_t msg_id, int64_t size_or_errno)
{
	char cmd[MSG_COPEN_MAX];
	int n = msg_copen(cmd, sizeof(cmd), msg_id, size_or_errno);

	if (n < 0)
		return EINVAL; /* not a size nor an errno the kernel takes: never sent */
	return device_command(w->device_fd, cmd, (size_t)n);
}

/* What an OPEN is answered with: the blob's size, or a negative errno (*@blob NULL). */
static int64_t open_answer(struct worker *w, const char *name, bool named, bool erofs, struct blob **blob)
{
	int err;

	*blob = NULL;
	if (!named || !erofs)
		return -ENOENT;
	err = blob_for(w, name, blob);
	if (err != 0) {
		struct line l;

		line_begin(&l, &w->log, "error");
		line_str(&l, "why", "open blob");
		line_str(&l, "cookie", name);
		line_i64(&l, "errno", err);
		log_emit(&w->log, &l);
		return -(int64_t)err;
	}
	return *blob != NULL ? (*blob)->size : -ENOENT;
}

static void handle_open(struct worker *w, const struct msg *m)
{
	char name[NAME_MAX_LEN];
	bool named = msg_blob_name(m->open.cookie_key, m->open.cookie_key_len, name, sizeof(name)) == 0;
	bool erofs = msg_volume_is_erofs(&m->open);
	int fd = (int)m->open.fd;
	struct blob *blob;
	int64_t answer;
	struct line l;
	int err;

	line_begin(&l, &w->log, "recv");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", "OPEN");
	line_strn(&l, "volume", m->open.volume_key, m->open.volume_key_len);
	line_strn(&l, "cookie", (const char *)m->open.cookie_key, m->open.cookie_key_len);
	line_u64(&l, "fd", m->open.fd);
	log_emit(&w->log, &l);

	/* First of all, the supervisor gets the fd: from now on a death does not close it. With the
	 * blob name, or "" when there is no blob to serve (a next worker answers it -ENOENT too). */
	err = chan_send(w->chan, CHAN_DEPOSIT, m->object_id, m->msg_id, false, named && erofs ? name : "", fd);
	if (err != 0)
		log_request_error(&w->log, m, "deposit", err);

	answer = open_answer(w, name, named, erofs, &blob);
	/* In the table before the copen: once it is in, another thread may read a READ for it. */
	if (blob != NULL && (err = object_add(w, m->object_id, m->msg_id, fd, blob, name, false)) != 0) {
		log_request_error(&w->log, m, "object table", err);
		blob = NULL;
		answer = -err;
	}
	err = write_copen(w, m->msg_id, answer);
	if (err != 0) {
		/* refused: no READ can have come for it. The supervisor's copy goes first. */
		tell_supervisor(w, CHAN_CLOSED, m->object_id);
		if (blob == NULL || !object_close(w, m->object_id))
			close(fd);
		if (device_dead_errno(err))
			worker_device_dead(w, "copen", err);
		log_request_error(&w->log, m, "copen", err);
		return;
	}
	tell_supervisor(w, CHAN_ANSWERED, m->object_id);
	if (blob != NULL)
		object_answered(w, m->object_id);
	if (blob == NULL) {
		/* the OPEN failed: its anon fd is of no use, and keeps the object pinned */
		tell_supervisor(w, CHAN_CLOSED, m->object_id);
		close(fd);
	}
	line_begin(&l, &w->log, "done");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", "OPEN");
	line_i64(&l, "size", answer);
	log_emit(&w->log, &l);
}

/* pread until @len bytes or the end of the file: the bytes read, or -1 (errno). */
static ssize_t pread_full(int fd, uint8_t *buf, size_t len, off_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, off + (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* pwrite all of it: 0, or -1 (errno; a write that takes nothing counts as EIO). */
static int pwrite_full(int fd, const uint8_t *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

/*
 * The data of a READ, from the blob into the anon fd at the same offsets: the aligned span that
 * covers the request, no further than the blob's last (partial, zero-filled) page, as daemon.py
 * writes it. Returns NULL, or the call that failed (errno set).
 */
static const char *copy_span(struct thread_ctx *t, struct object *o, const struct msg *m)
{
	uint64_t start, span, limit = (uint64_t)o->blob->size;

	if (msg_aligned_span(m->read.off, m->read.len, ALIGN, &start, &span) != 0) {
		errno = EOVERFLOW;
		return "aligned span";
	}
	limit += (ALIGN - limit % ALIGN) % ALIGN;
	span = start >= limit ? 0 : (span < limit - start ? span : limit - start);
	for (uint64_t pos = start; pos < start + span;) {
		size_t chunk = start + span - pos < CHUNK ? (size_t)(start + span - pos) : CHUNK;
		ssize_t got = pread_full(o->blob->fd, t->buf, chunk, (off_t)pos);

		if (got < 0)
			return "pread";
		memset(t->buf + got, 0, chunk - (size_t)got);
		if (pwrite_full(o->fd, t->buf, chunk, (off_t)pos) != 0)
			return "pwrite";
		pos += chunk;
	}
	return NULL;
}

/* A READ, its object pinned by serve() (@o; NULL: we hold no fd for it). */
static void handle_read(struct thread_ctx *t, const struct msg *m, struct object *o)
{
	struct worker *w = t->w;
	const char *failed, *by;
	struct line l;

	line_begin(&l, &w->log, "recv");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", "READ");
	line_u64(&l, "off", m->read.off);
	line_u64(&l, "len", m->read.len);
	log_emit(&w->log, &l);

	if (o == NULL) {
		lock(w);
		by = closed_by(w, m->object_id);
		unlock(w);
		/* A closed object's READs wait for its reopen, and come with the new object id: the
		 * kernel that hands one over for the id whose fd is gone leaves it unanswerable (and a
		 * dropped cookie's object has no READ to come). */
		log_request_error(&w->log, m, by == NULL ? "unknown object" :
				  strcmp(by, BY_PRUNE) == 0 ? "READ for an object whose fd was pruned (its cookie dropped)" :
				  "READ for an object whose fd the close fault closed", 0);
		return;
	}
	if (w->opt->read_delay_ms > 0)
		sleep_ms(w->opt->read_delay_ms); /* keeps requests in flight when a kill lands */
	failed = copy_span(t, o, m);
	if (failed == NULL && ioctl(o->fd, CACHEFILES_IOC_READ_COMPLETE, (unsigned long)m->msg_id) != 0)
		failed = "READ_COMPLETE";
	if (failed != NULL) {
		int err = errno;

		object_unpin(w, o);
		log_request_error(&w->log, m, failed, err);
		return;
	}
	object_unpin(w, o);
	line_begin(&l, &w->log, "done");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", "READ");
	log_emit(&w->log, &l);
}

static void handle_close(struct worker *w, const struct msg *m)
{
	struct line l;

	line_begin(&l, &w->log, "recv");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", "CLOSE");
	log_emit(&w->log, &l);

	/* the supervisor's copy first: a death between the two closes leaves nothing held */
	tell_supervisor(w, CHAN_CLOSED, m->object_id);
	if (!object_close(w, m->object_id)) {
		const char *by;

		lock(w);
		by = closed_by(w, m->object_id);
		unlock(w);
		if (by == NULL) {
			log_request_error(&w->log, m, "unknown object", 0);
			return;
		}
		/* read before the close fault took its fd (the kernel flushes a CLOSE it has not
		 * delivered when the fd goes), or before the supervisor's word that it pruned it (the
		 * cookie is dropped once its CLOSE is delivered): both wanted the fd closed, and it is */
		line_begin(&l, &w->log, "done");
		line_u64(&l, "msg_id", m->msg_id);
		line_u64(&l, "object_id", m->object_id);
		line_str(&l, "op", "CLOSE");
		line_str(&l, "closed_by", by);
		log_emit(&w->log, &l);
		return;
	}
	line_begin(&l, &w->log, "done");
	line_u64(&l, "msg_id", m->msg_id);
	line_u64(&l, "object_id", m->object_id);
	line_str(&l, "op", "CLOSE");
	log_emit(&w->log, &l);
}

/*
 * The supervisor pruned its copy of an object's fd (PRUNED: the kernel lists its cookie as
 * dropped, or no more): ours goes too, if we have the object that OPEN gave (its object id and
 * msg_id). A worker that read the object's CLOSE closes it anyway; one that was handed the fd
 * after its predecessor read the CLOSE and died would never hear of it again, and its copy
 * would pin the object, its cookie and its volume for good. A READ pinning it closes it when
 * done (a dropped cookie has no READ to come).
 */
static void worker_prune(struct worker *w, const struct chan_msg *m)
{
	bool had = false;
	int fd = -1;
	struct line l;
	ssize_t i;

	lock(w);
	i = object_index(w, m->object_id);
	if (i >= 0 && w->objects[i]->msg_id == m->msg_id) {
		had = true;
		fd = object_detach(w, (size_t)i);
		closed_mark(w, m->object_id, BY_PRUNE);
	}
	unlock(w);
	if (fd >= 0)
		close(fd);
	line_begin(&l, &w->log, "prune_told");
	line_u64(&l, "object_id", m->object_id);
	line_u64(&l, "msg_id", m->msg_id);
	line_str(&l, "cookie", m->cookie);
	line_bool(&l, "closed", had);
	log_emit(&w->log, &l);
}

/* One message from the supervisor after the handover (the closer reads them). False: the
 * supervisor is gone (and we die with it: PR_SET_PDEATHSIG), read the channel no more. */
static bool supervisor_said(struct worker *w)
{
	struct chan_msg m;
	int fd;
	int got = chan_recv(w->chan, &m, &fd);

	if (got <= 0) {
		int err = got == 0 ? 0 : errno;

		log_error(&w->log, got == 0 ? "channel: supervisor gone" : "channel", err);
		if (got == 0 || err == ECONNRESET || err == ENOTCONN)
			return false;
		sleep_ms(READ_ERROR_PAUSE_MS);
		return true;
	}
	if (fd >= 0)
		close(fd);
	if (m.kind == CHAN_PRUNED)
		worker_prune(w, &m);
	else
		log_error(&w->log, "channel: unexpected message from the supervisor", 0);
	return true;
}

/* ---- the close fault ---------------------------------------------------------------------- */

/* xorshift64*: the closer's choice, seeded per worker (its pid and the time). */
static uint64_t rng_next(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * UINT64_C(0x2545F4914F6CDD1D);
}

/* The supervisor's copy of @object_id's fd closed, and its word for it awaited: 1 it had one
 * (closed now), 0 it had none, -1 no word (logged). Only the closer reads the channel once
 * the handover is done. */
static int supervisor_closes(struct worker *w, uint32_t object_id)
{
	struct chan_msg m;
	struct timespec start, now;
	int err;

	memset(&m, 0, sizeof(m));
	m.kind = CHAN_CLOSED;
	m.object_id = object_id;
	m.reply = 1;
	if ((err = chan_send_msg(w->chan, &m, -1, 0)) != 0) {
		log_error(&w->log, "close fault: tell supervisor", err);
		return -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		struct pollfd p = {.fd = w->chan, .events = POLLIN};
		long waited_ms;
		int n, fd, got;

		clock_gettime(CLOCK_MONOTONIC, &now);
		waited_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited_ms >= CLOSE_WORD_TIMEOUT_MS) {
			log_error(&w->log, "close fault: no word from the supervisor", ETIMEDOUT);
			return -1;
		}
		n = poll(&p, 1, (int)(CLOSE_WORD_TIMEOUT_MS - waited_ms));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			log_error(&w->log, "close fault: poll", errno);
			return -1;
		}
		if (n == 0)
			continue; /* the deadline, said above */
		got = chan_recv(w->chan, &m, &fd);
		if (got <= 0) {
			log_error(&w->log, got == 0 ? "close fault: supervisor gone" : "close fault: channel",
				  got == 0 ? 0 : errno);
			return -1;
		}
		if (fd >= 0)
			close(fd);
		if (m.kind == CHAN_CLOSED && m.object_id == object_id)
			return m.held ? 1 : 0;
		if (m.kind == CHAN_PRUNED) { /* the supervisor's word comes after it */
			worker_prune(w, &m);
			continue;
		}
		/* the word for an earlier close that timed out, or nothing we asked for */
		log_error(&w->log, "close fault: unexpected message from the supervisor", 0);
	}
}

/*
 * The close fault: the anon fd of one object closed unasked, as a daemon that lost it would.
 * Chosen at random among the objects whose copen was accepted (one whose OPEN is still being
 * answered would be closed before its copen: adversarial's misbehaviour, not this fault) and
 * that no READ pins.
 *
 * The order:
 *  1. the gate exclusive: no thread is between the read(2) of a READ and its pin, so an idle
 *     object has no READ delivered and unanswered; the serving threads that poll(2) wake as
 *     ever, and wait here only before their read(2). Those answering requests go on.
 *  2. the object out of the table, under the table's lock (a CLOSE read meanwhile finds it
 *     gone, and says so: `closed_by`), its id remembered as closed by the fault;
 *  3. the supervisor closes its copy (CHAN_CLOSED with `reply`), and says so: ours is the last;
 *  4. ours closed: the kernel releases the anon fd here, in the worker, which serves on (the
 *     kernel's ledger counts an fd the daemon let go unasked by the process that released it)
 *     and marks the object closed: no READ for this object id is delivered again; the next
 *     READ for the object makes the kernel reopen it, with an OPEN answered as any other;
 *  5. the gate left.
 * A worker that dies between 3 and 4 leaves nothing held: its copy dies with it, and the
 * supervisor's is closed already (it reads what a dead worker sent before it sees it gone).
 */
static void close_one(struct worker *w)
{
	char cookie[NAME_MAX_LEN];
	size_t objects, idle = 0;
	uint32_t object_id = 0;
	int fd = -1, held, err = 0;
	struct line l;

	gate_exclusive(w);
	lock(w);
	objects = w->n_objects;
	for (size_t i = 0; i < w->n_objects; i++)
		idle += w->objects[i]->busy == 0 && w->objects[i]->answered;
	if (idle > 0) {
		size_t pick = (size_t)(rng_next(&w->rng) % idle);

		for (size_t i = 0; i < w->n_objects; i++) {
			struct object *o = w->objects[i];

			if (o->busy != 0 || !o->answered || pick-- != 0)
				continue;
			object_id = o->object_id;
			memcpy(cookie, o->cookie, sizeof(cookie));
			fd = object_detach(w, i); /* idle: its fd comes back, the entry freed */
			closed_mark(w, object_id, BY_CLOSE_FAULT);
			break;
		}
	}
	unlock(w);
	if (fd < 0) {
		gate_leave(w);
		line_begin(&l, &w->log, "close_fd");
		line_str(&l, "skipped", objects == 0 ? "no object" : "all busy");
		line_u64(&l, "objects", objects);
		log_emit(&w->log, &l);
		return;
	}
	held = supervisor_closes(w, object_id);
	if (close(fd) != 0)
		err = errno;
	gate_leave(w);
	line_begin(&l, &w->log, "close_fd");
	line_u64(&l, "object_id", object_id);
	line_str(&l, "cookie", cookie);
	line_i64(&l, "fd", fd);
	line_u64(&l, "idle", idle);
	line_u64(&l, "objects", objects);
	if (held >= 0)
		line_bool(&l, "supervisor_held", held == 1);
	if (err != 0)
		line_i64(&l, "close_errno", err);
	log_emit(&w->log, &l);
}

/* The closer thread: every SIGUSR1 (blocked in every thread of the worker, taken here alone
 * through a signalfd: no handler runs, nothing is done in a signal's context) closes one fd;
 * the supervisor's word that it pruned an fd closes ours. It never reads the device. */
static void *closer(void *arg)
{
	struct worker *w = arg;
	struct pollfd p[2] = {{.fd = w->sigfd, .events = POLLIN}, {.fd = w->chan, .events = POLLIN}};

	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno != EINTR) {
				log_error(&w->log, "closer: poll", errno);
				sleep_ms(READ_ERROR_PAUSE_MS);
			}
			continue;
		}
		if (p[0].revents & POLLIN) {
			struct signalfd_siginfo info;
			ssize_t n = read(w->sigfd, &info, sizeof(info));

			if (n == (ssize_t)sizeof(info)) {
				close_one(w);
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				log_error(&w->log, "closer: signalfd", errno);
				sleep_ms(READ_ERROR_PAUSE_MS);
			}
		}
		if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) && !supervisor_said(w))
			p[1].fd = -1; /* a negative fd: poll(2) leaves it out */
	}
	return NULL;
}

/* One serving thread: poll with no timeout, read one message, answer it; no lock around the device. */
static void *serve(void *arg)
{
	struct thread_ctx *t = arg;
	struct worker *w = t->w;
	uint8_t buf[CACHEFILES_MSG_MAX_SIZE];

	for (;;) {
		struct pollfd p = {.fd = w->device_fd, .events = POLLIN};
		char why[MSG_WHY_MAX];
		struct object *pinned;
		struct msg m;
		ssize_t n;
		int ready;

		/* No timeout: only the kernel ends this wait. */
		ready = poll(&p, 1, -1);
		if (ready < 0) {
			int err = errno;

			if (err != EINTR) {
				log_error(&w->log, "poll", err);
				sleep_ms(READ_ERROR_PAUSE_MS);
			}
			continue;
		}
		if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
			worker_device_dead(w, p.revents & POLLNVAL ? "poll: POLLNVAL" :
					   p.revents & POLLERR ? "poll: POLLERR" : "poll: POLLHUP", 0);
		if (!(p.revents & POLLIN))
			continue;
		/* Shared with the other threads, from the read to the pin of what it read: the close
		 * fault (exclusive) never takes an object whose READ was read and is not pinned yet. */
		gate_shared(w);
		n = read(w->device_fd, buf, sizeof(buf));
		if (n <= 0) {
			int err = errno;

			gate_leave(w);
			if (n == 0)
				continue; /* another thread took the request that woke us */
			if (device_dead_errno(err))
				worker_device_dead(w, "read", err);
			if (err == EINTR)
				continue;
			/* EEXIST: an OPEN delivered again for an object whose anon fd is open (the kernel
			 * failed it). EAGAIN and the like: logged, and the loop goes on. */
			log_error(&w->log, "read", err);
			if (err != EEXIST && err != EAGAIN)
				sleep_ms(READ_ERROR_PAUSE_MS);
			continue;
		}
		if (msg_decode(buf, (size_t)n, &m, why, sizeof(why)) != MSG_OK) {
			struct line l;

			gate_leave(w);
			line_begin(&l, &w->log, "error");
			line_str(&l, "why", why);
			line_u64(&l, "bytes", (uint64_t)n);
			log_emit(&w->log, &l);
			continue;
		}
		/* the table holds the fds the supervisor handed over too: a dead worker's objects */
		pinned = m.op == MSG_READ ? object_pin(w, m.object_id) : NULL;
		gate_leave(w);
		switch (m.op) {
		case MSG_OPEN:
			handle_open(w, &m);
			break;
		case MSG_READ:
			handle_read(t, &m, pinned);
			break;
		case MSG_CLOSE:
			handle_close(w, &m);
			break;
		}
	}
	return NULL;
}

/*
 * An anon fd the supervisor held across a death. An OPEN the dead worker read and never
 * answered is answered now, by its msg_id: the kernel still holds it, delivered, and a
 * `restore` first would deliver it again while its fd is open, which the kernel refuses
 * (EEXIST: get_fd finds the object's id valid). A copen refused with EINVAL was answered after
 * all (by the dead one, which died before it could say so) or ended by the kernel.
 */
static void take_over(struct worker *w, const struct chan_msg *held, int fd)
{
	struct blob *blob;
	int64_t answer = open_answer(w, held->cookie, held->cookie[0] != '\0', true, &blob);
	int copen_err = 0;
	struct line l;

	if (!held->answered) {
		copen_err = write_copen(w, held->msg_id, answer);
		if (copen_err == 0) {
			tell_supervisor(w, CHAN_ANSWERED, held->object_id);
			line_begin(&l, &w->log, "done");
			line_u64(&l, "msg_id", held->msg_id);
			line_u64(&l, "object_id", held->object_id);
			line_str(&l, "op", "OPEN");
			line_i64(&l, "size", answer);
			line_bool(&l, "inherited", true);
			log_emit(&w->log, &l);
		} else if (device_dead_errno(copen_err)) {
			worker_device_dead(w, "copen", copen_err);
		}
	}
	line_begin(&l, &w->log, "fd_received");
	line_u64(&l, "object_id", held->object_id);
	line_u64(&l, "msg_id", held->msg_id);
	line_str(&l, "cookie", held->cookie);
	line_i64(&l, "fd", fd);
	line_bool(&l, "answered", held->answered);
	if (copen_err != 0)
		line_i64(&l, "copen_errno", copen_err);
	log_emit(&w->log, &l);
	if (copen_err != 0 && copen_err != EINVAL) {
		line_begin(&l, &w->log, "error");
		line_u64(&l, "msg_id", held->msg_id);
		line_u64(&l, "object_id", held->object_id);
		line_str(&l, "op", "OPEN");
		line_str(&l, "why", "copen (inherited)");
		line_i64(&l, "errno", copen_err);
		log_emit(&w->log, &l);
	}

	if (blob == NULL || (copen_err != 0 && copen_err != EINVAL) || object_add(w, held->object_id, held->msg_id, fd, blob, held->cookie, true) != 0) {
		/* nothing to serve it with: let it go, the supervisor's copy first */
		tell_supervisor(w, CHAN_CLOSED, held->object_id);
		close(fd);
	}
}

/* The worker, in the child of the supervisor's fork; never returns. */
static _Noreturn void worker_main(const struct options *opt, struct log log, int device_fd, int chan, pid_t supervisor)
{
	struct worker w;
	struct thread_ctx threads[MAX_THREADS];
	pthread_rwlockattr_t gate_attr;
	pthread_t closer_tid;
	struct timespec now;
	sigset_t usr1;
	struct line l;
	int err;

	/* Dies with the supervisor (which holds the device and the anon fds): no orphan serves on. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != supervisor)
		_exit(WORKER_FAILED);
	/* The supervisor blocks its signals for its signalfd; a worker takes them as they come, but
	 * SIGUSR1, which stays blocked in every thread for the closer's signalfd (one sent before
	 * the closer runs waits for it: it was blocked in the supervisor already, across the fork). */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	if (sigprocmask(SIG_SETMASK, &usr1, NULL) != 0)
		_exit(WORKER_FAILED);

	memset(&w, 0, sizeof(w));
	w.opt = opt;
	w.log = log;
	w.log.who = "cdaemon";
	w.log.pid = getpid();
	w.device_fd = device_fd;
	w.chan = chan;
	/* the closer's: a SIGUSR1 pending for the process waits in it (blocked everywhere) */
	if ((w.sigfd = signalfd(-1, &usr1, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
		log_error(&w.log, "signalfd", errno);
		_exit(WORKER_FAILED);
	}
	if ((err = pthread_mutex_init(&w.lock, NULL)) != 0) {
		log_error(&w.log, "pthread_mutex_init", err);
		_exit(WORKER_FAILED);
	}
	/* the closer waiting for the gate stops new readers: it never waits for a stream of them */
	if ((err = pthread_rwlockattr_init(&gate_attr)) != 0 ||
	    (err = pthread_rwlockattr_setkind_np(&gate_attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP)) != 0 ||
	    (err = pthread_rwlock_init(&w.gate, &gate_attr)) != 0) {
		log_error(&w.log, "pthread_rwlock_init", err);
		_exit(WORKER_FAILED);
	}
	pthread_rwlockattr_destroy(&gate_attr);
	if (clock_gettime(CLOCK_REALTIME, &now) != 0)
		now.tv_sec = now.tv_nsec = 0;
	w.rng = ((uint64_t)w.log.pid << 32) ^ (uint64_t)now.tv_sec * 1000000000u ^ (uint64_t)now.tv_nsec;
	if (w.rng == 0)
		w.rng = 1; /* xorshift's one state that stays put */

	/* What the supervisor held across the last death, up to its END. */
	for (;;) {
		struct chan_msg held;
		int fd;
		int got = chan_recv(chan, &held, &fd);

		if (got <= 0) {
			log_error(&w.log, got == 0 ? "handover: supervisor gone" : "handover", got == 0 ? 0 : errno);
			_exit(WORKER_FAILED);
		}
		if (held.kind == CHAN_END) {
			if (fd >= 0)
				close(fd);
			break;
		}
		if (held.kind != CHAN_HELD || fd < 0) {
			log_error(&w.log, "handover: not a held fd", 0);
			if (fd >= 0)
				close(fd);
			continue;
		}
		take_over(&w, &held, fd);
	}

	if (w.log.incarnation > 1 && !opt->no_restore) {
		/* every request the kernel holds marked new again: what a dead worker read is delivered again */
		err = device_command(device_fd, "restore", strlen("restore"));
		line_begin(&l, &w.log, "restore");
		line_bool(&l, "ok", err == 0);
		if (err != 0)
			line_i64(&l, "errno", err);
		log_emit(&w.log, &l);
		if (err != 0 && device_dead_errno(err))
			worker_device_dead(&w, "restore", err);
	}

	line_begin(&l, &w.log, "serving");
	line_u64(&l, "threads", opt->threads);
	line_u64(&l, "objects", w.n_objects);
	log_emit(&w.log, &l);
	/* after the handover: the closer is from now on the one reader of the channel */
	if ((err = pthread_create(&closer_tid, NULL, closer, &w)) != 0) {
		log_error(&w.log, "pthread_create: closer", err);
		_exit(WORKER_FAILED);
	}
	for (unsigned i = 0; i < opt->threads; i++) {
		void *buf = NULL;

		threads[i].w = &w;
		if ((err = posix_memalign(&buf, ALIGN, CHUNK)) != 0) {
			log_error(&w.log, "posix_memalign", err);
			_exit(WORKER_FAILED);
		}
		threads[i].buf = buf;
		if ((err = pthread_create(&threads[i].tid, NULL, serve, &threads[i])) != 0) {
			log_error(&w.log, "pthread_create", err);
			_exit(WORKER_FAILED);
		}
	}
	for (unsigned i = 0; i < opt->threads; i++) {
		if ((err = pthread_join(threads[i].tid, NULL)) != 0)
			log_error(&w.log, "pthread_join", err);
	}
	/* the threads never return: only a death ends a worker */
	log_exit(&w.log, "threads returned", WORKER_FAILED);
	_exit(WORKER_FAILED);
}

/* ==== the supervisor ======================================================================== */

/* An anon fd deposited by a worker, kept across its death. */
struct held {
	uint32_t object_id;
	uint32_t msg_id;
	bool answered;
	int fd;
	char cookie[NAME_MAX_LEN];
	char key[2 * NAME_MAX_LEN]; /* the cookie's key as the kernel's list prints it: the blob name in hex */
	size_t key_len;             /* 0: no blob name, nothing to look for (never pruned) */
	uint8_t seen, seen_before;  /* COOKIE_* in the list read last, and in the one before */
};

/* What a read of the cookie list says of a held fd's cookie. */
enum {
	COOKIE_LISTED = 1, /* a row has its key */
	COOKIE_LIVE = 2,   /* a row has its key and a state other than dropped */
};

struct supervisor {
	const struct options *opt;
	struct log log;
	int device_fd;
	int sigfd; /* SIGTERM and SIGINT; SIGUSR1 (not ours: logged) */
	struct held *held;
	size_t n_held, cap_held;
	pid_t worker; /* 0: none */
	int chan;     /* our end of the worker's channel; -1: none */
	bool stopping;
	const char *stop_why;
	bool cookies_unreadable; /* said once, until a read succeeds again */
	uint64_t next_prune_ms;  /* CLOCK_MONOTONIC */
};

static ssize_t held_index(const struct supervisor *s, uint32_t object_id)
{
	for (size_t i = 0; i < s->n_held; i++)
		if (s->held[i].object_id == object_id)
			return (ssize_t)i;
	return -1;
}

static void held_drop(struct supervisor *s, uint32_t object_id)
{
	ssize_t i = held_index(s, object_id);

	if (i < 0)
		return;
	close(s->held[i].fd);
	s->held[i] = s->held[--s->n_held];
}

static void held_close_all(struct supervisor *s)
{
	for (size_t i = 0; i < s->n_held; i++)
		close(s->held[i].fd);
	s->n_held = 0;
}

static void held_deposit(struct supervisor *s, const struct chan_msg *m, int fd)
{
	struct held *h;

	/* an object id deposited again is a new anon fd for it: the old one is let go */
	held_drop(s, m->object_id);
	if (s->n_held == s->cap_held) {
		size_t cap = s->cap_held ? 2 * s->cap_held : 64;
		struct held *grown = realloc(s->held, cap * sizeof(*grown));

		if (grown == NULL) {
			log_error(&s->log, "deposit: out of memory, fd not held", ENOMEM);
			close(fd);
			return;
		}
		s->held = grown;
		s->cap_held = cap;
	}
	h = &s->held[s->n_held++];
	h->object_id = m->object_id;
	h->msg_id = m->msg_id;
	h->answered = m->answered;
	h->fd = fd;
	memcpy(h->cookie, m->cookie, sizeof(h->cookie));
	h->key_len = 0;
	for (const unsigned char *c = (const unsigned char *)h->cookie; *c != '\0'; c++, h->key_len += 2)
		snprintf(h->key + h->key_len, 3, "%02x", *c);
	h->key[h->key_len] = '\0';
	h->seen = h->seen_before = 0;
}

static void supervisor_message(struct supervisor *s, const struct chan_msg *m, int fd)
{
	ssize_t i;

	switch (m->kind) {
	case CHAN_DEPOSIT:
		if (fd >= 0) {
			held_deposit(s, m, fd);
			return;
		}
		log_error(&s->log, "deposit without an fd", 0);
		return;
	case CHAN_ANSWERED:
		/* unknown: closed already (a CLOSE can come before the thread that wrote the copen says so) */
		if ((i = held_index(s, m->object_id)) >= 0)
			s->held[i].answered = true;
		break;
	case CHAN_CLOSED:
		if (m->reply) {
			/* the close fault waits for our copy to be gone before it closes its own */
			struct chan_msg word;
			int err;

			memset(&word, 0, sizeof(word));
			word.kind = CHAN_CLOSED;
			word.object_id = m->object_id;
			word.held = held_index(s, m->object_id) >= 0;
			held_drop(s, m->object_id);
			/* a worker killed as it waits is gone with its copy: nothing to say then */
			if ((err = chan_send_msg(s->chan, &word, -1, 0)) != 0 && err != EPIPE && err != ECONNRESET)
				log_error(&s->log, "channel: the close fault's word", err);
		} else {
			held_drop(s, m->object_id);
		}
		break;
	default:
		log_error(&s->log, "channel: unknown message", 0);
		break;
	}
	if (fd >= 0)
		close(fd);
}

/* ---- letting go of the fds of dropped cookies --------------------------------------------- */

static uint64_t monotonic_ms(void)
{
	struct timespec now;

	if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
		return 0;
	return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

/*
 * The whole cookie list (--cookies-file): 0 and a malloc'd text in *@text, *@len bytes; or an
 * errno (EPROTO: it does not begin with the list's header, as a file being written may not).
 */
static int read_cookies(const char *path, char **text, size_t *len)
{
	static const char header[] = "COOKIE ";
	size_t size = 64 * 1024, got = 0;
	char *buf = NULL;
	int fd, err = 0;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return errno;
	for (;;) {
		ssize_t n;

		if (buf == NULL || got == size) {
			char *grown;

			if (buf != NULL && size >= COOKIES_MAX) {
				err = EFBIG;
				break;
			}
			if (buf != NULL)
				size *= 2;
			if ((grown = realloc(buf, size)) == NULL) {
				err = ENOMEM;
				break;
			}
			buf = grown;
		}
		n = read(fd, buf + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = errno;
			break;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (err == 0 && (got < sizeof(header) - 1 || memcmp(buf, header, sizeof(header) - 1) != 0))
		err = EPROTO;
	if (err != 0) {
		free(buf);
		return err;
	}
	*text = buf;
	*len = got;
	return 0;
}

/*
 * Each held fd's COOKIE_* in @text, a cookie list as fs/netfs/fscache_cookie.c prints it: a
 * header, then a row a cookie, `debug_id volume_id ref n_active n_accesses state flags key`,
 * the key in hex, followed by `, aux` when the cookie has auxiliary data; the state is one of
 * "-LCAIFUWRD", D dropped. Read as guest_scripts/contract.py's cookie_live reads it: the 8th
 * field, less a trailing comma, is the key; the 6th the state.
 */
static void cookies_mark(struct supervisor *s, const char *text, size_t len)
{
	const char *p = text, *end = text + len;

	for (size_t i = 0; i < s->n_held; i++)
		s->held[i].seen = 0;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *field[8];
		size_t field_len[8], n = 0;
		const char *q = p;

		if (eol == NULL)
			eol = end;
		while (n < 8) {
			while (q < eol && (*q == ' ' || *q == '\t'))
				q++;
			if (q == eol)
				break;
			field[n] = q;
			while (q < eol && *q != ' ' && *q != '\t')
				q++;
			field_len[n] = (size_t)(q - field[n]);
			n++;
		}
		p = eol + 1;
		if (n < 8)
			continue;
		if (field_len[7] > 0 && field[7][field_len[7] - 1] == ',')
			field_len[7]--;
		for (size_t i = 0; i < s->n_held; i++) {
			struct held *h = &s->held[i];

			if (h->key_len == 0 || h->key_len != field_len[7] || memcmp(h->key, field[7], h->key_len) != 0)
				continue;
			h->seen |= COOKIE_LISTED;
			if (!(field_len[5] == 1 && field[5][0] == 'D'))
				h->seen |= COOKIE_LIVE;
		}
	}
}

/* The cookie list read and marked: true, or false (nothing to go by; said once a streak). */
static bool cookies_read(struct supervisor *s)
{
	char *text = NULL;
	size_t len = 0;
	int err = read_cookies(s->opt->cookies_file, &text, &len);

	if (err != 0) {
		if (!s->cookies_unreadable) {
			struct line l;

			line_begin(&l, &s->log, "cookies_unreadable");
			line_str(&l, "path", s->opt->cookies_file);
			if (err == EPROTO)
				line_str(&l, "why", "no cookie list header");
			else
				line_i64(&l, "errno", err);
			line_str(&l, "msg", "no fd pruned while it cannot be read");
			log_emit(&s->log, &l);
			s->cookies_unreadable = true;
		}
		return false;
	}
	s->cookies_unreadable = false;
	cookies_mark(s, text, len);
	free(text);
	return true;
}

/*
 * Every held fd whose cookie the kernel is done with closed: listed as dropped (D: its
 * withdrawal, and so the CLOSE of its object, is over), or not listed at all. A CLOSE is ended
 * by the kernel at its delivery, never delivered again (not even after `restore`): a worker
 * killed after reading one and before telling us left our copy open, and it pins the object,
 * its cookie (which stays listed, dropped, while the object lives) and so its fscache volume: a
 * later mount of that volume would wait for it, uninterruptibly (__fscache_acquire_volume).
 *
 * A cookie is listed from its allocation, before its lookup sends the OPEN, until its last
 * reference goes (fscache_free_cookie), which our fd's object holds: one deposited for an
 * OPEN being looked up is live (its state L or C), and a held fd whose cookie is not listed is
 * gone. A cookie of the same key listed live keeps the fd (a new mount of the blob while the old
 * object is held: the fd goes once that one is dropped too). The list is read in page-sized
 * pieces, the kernel's lock let go between them, and a cookie freed meanwhile shifts the rest:
 * one row may be skipped. So a verdict stands only if a second read taken after the first agrees.
 *
 * @at: "handover" (before a fork) or "watch" (every PRUNE_INTERVAL_MS). The live worker, if
 * any, is told of each (PRUNED): it closes its copy, which otherwise pins the object as ours
 * did, if it was handed the fd after its predecessor read the CLOSE. An fd with no blob name
 * (no key to look for) is never pruned: its worker closes it once its OPEN is answered.
 */
static void prune(struct supervisor *s, const char *at)
{
	size_t keyed = 0, candidates = 0;

	for (size_t i = 0; i < s->n_held; i++)
		keyed += s->held[i].key_len > 0;
	if (keyed == 0 || !cookies_read(s))
		return;
	for (size_t i = 0; i < s->n_held; i++) {
		s->held[i].seen_before = s->held[i].seen;
		candidates += s->held[i].key_len > 0 && !(s->held[i].seen & COOKIE_LIVE);
	}
	if (candidates == 0 || !cookies_read(s))
		return;
	for (size_t i = 0; i < s->n_held;) {
		struct held h = s->held[i];
		bool tell = s->chan >= 0 && s->worker > 0;
		struct line l;

		if (h.key_len == 0 || (h.seen_before & COOKIE_LIVE) || (h.seen & COOKIE_LIVE)) {
			i++;
			continue;
		}
		s->held[i] = s->held[--s->n_held];
		close(h.fd);
		line_begin(&l, &s->log, "fd_pruned");
		line_u64(&l, "object_id", h.object_id);
		line_u64(&l, "msg_id", h.msg_id);
		line_str(&l, "cookie", h.cookie);
		line_str(&l, "why", h.seen & COOKIE_LISTED ? "cookie dropped" : "cookie gone");
		line_bool(&l, "answered", h.answered);
		line_str(&l, "at", at);
		line_bool(&l, "tell_worker", tell);
		log_emit(&s->log, &l);
		if (tell) {
			struct chan_msg m;
			int err;

			memset(&m, 0, sizeof(m));
			m.kind = CHAN_PRUNED;
			m.object_id = h.object_id;
			m.msg_id = h.msg_id;
			memcpy(m.cookie, h.cookie, sizeof(m.cookie));
			/* never waits for a worker that does not read (a stopped one): EAGAIN, said; one
			 * that died meanwhile is gone with its copy */
			err = chan_send_msg(s->chan, &m, -1, MSG_DONTWAIT);
			if (err != 0 && err != EPIPE && err != ECONNRESET) {
				line_begin(&l, &s->log, "error");
				line_u64(&l, "object_id", h.object_id);
				line_str(&l, "why", "channel: the worker not told of a pruned fd");
				line_i64(&l, "errno", err);
				log_emit(&s->log, &l);
			}
		}
	}
}

/* A prune if one is due (PRUNE_INTERVAL_MS after the last): "watch". */
static void prune_if_due(struct supervisor *s)
{
	uint64_t now = monotonic_ms();

	if (now < s->next_prune_ms)
		return;
	prune(s, "watch");
	s->next_prune_ms = monotonic_ms() + PRUNE_INTERVAL_MS;
}

/* How long poll(2) may wait before the next prune is due (-1: nothing held, no prune to come). */
static int prune_timeout(const struct supervisor *s)
{
	uint64_t now = monotonic_ms();

	if (s->n_held == 0)
		return -1;
	return now >= s->next_prune_ms ? 0 : (int)(s->next_prune_ms - now);
}

/* A SIGTERM or SIGINT waiting in the signalfd: stop, killing the worker if there is one. */
static void supervisor_signal(struct supervisor *s)
{
	struct signalfd_siginfo info;
	ssize_t n = read(s->sigfd, &info, sizeof(info));

	if (n != (ssize_t)sizeof(info)) {
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			log_error(&s->log, "signalfd", errno);
		return;
	}
	if (info.ssi_signo == SIGUSR1) {
		/* blocked here so that a worker is born with it blocked; the fault is the worker's */
		struct line l;

		line_begin(&l, &s->log, "error");
		line_str(&l, "why", "SIGUSR1 to the supervisor: the close fault is the worker's (--worker-pid-file)");
		line_i64(&l, "sender_pid", (int64_t)info.ssi_pid);
		log_emit(&s->log, &l);
		return;
	}
	if (s->stopping)
		return;
	s->stopping = true;
	s->stop_why = info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
	if (s->worker > 0 && kill(s->worker, SIGKILL) != 0)
		log_error(&s->log, "kill worker", errno);
}

/* Waits @ms, or less if a signal stops us; prunes meanwhile as it falls due. */
static void supervisor_pause(struct supervisor *s, unsigned ms)
{
	uint64_t deadline = monotonic_ms() + ms;

	for (;;) {
		struct pollfd p = {.fd = s->sigfd, .events = POLLIN};
		uint64_t now = monotonic_ms();
		int timeout, until_prune, n;

		if (now >= deadline)
			return;
		timeout = (int)(deadline - now);
		until_prune = prune_timeout(s);
		if (until_prune >= 0 && until_prune < timeout)
			timeout = until_prune;
		n = poll(&p, 1, timeout);
		if (n < 0 && errno != EINTR) {
			log_error(&s->log, "poll", errno);
			return;
		}
		if (n > 0) {
			supervisor_signal(s);
			return;
		}
		prune_if_due(s);
	}
}

/* Every fd held, then END: queued before the worker serves. A worker that dies meanwhile makes
 * a send fail; what was not sent stays held for the next one. */
static void hand_over(struct supervisor *s)
{
	for (size_t i = 0; i < s->n_held; i++) {
		const struct held *h = &s->held[i];
		int err = chan_send(s->chan, CHAN_HELD, h->object_id, h->msg_id, h->answered, h->cookie, h->fd);

		if (err != 0) {
			log_error(&s->log, "hand over", err);
			return;
		}
	}
	int err = chan_send(s->chan, CHAN_END, 0, 0, false, NULL, -1);

	if (err != 0)
		log_error(&s->log, "hand over: end", err);
}

/* Forks the next worker: 0, or -1 (logged). */
static int start_worker(struct supervisor *s)
{
	int sv[2];
	pid_t pid;
	struct line l;
	int err;
	size_t unanswered = 0;

	/* what the kernel is done with is not handed over: a worker that read a CLOSE and died
	 * before telling us was the only one to hear of it */
	prune(s, "handover");
	s->next_prune_ms = monotonic_ms() + PRUNE_INTERVAL_MS;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
		log_error(&s->log, "socketpair", errno);
		return -1;
	}
	s->log.incarnation++;
	pid = fork();
	if (pid < 0) {
		log_error(&s->log, "fork", errno);
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (pid == 0) {
		/* The worker keeps the device, its end of the channel and the log; the anon fds the
		 * supervisor holds come to it by SCM_RIGHTS, not by fork: a copy inherited here would
		 * keep each object open after its CLOSE. */
		close(sv[0]);
		close(s->sigfd);
		for (size_t i = 0; i < s->n_held; i++)
			close(s->held[i].fd);
		worker_main(s->opt, s->log, s->device_fd, sv[1], s->log.pid);
	}
	close(sv[1]);
	s->worker = pid;
	s->chan = sv[0];
	if (s->opt->worker_pid_file != NULL && (err = write_pid_file(s->opt->worker_pid_file, pid)) != 0)
		log_error(&s->log, "worker pid file", err);
	for (size_t i = 0; i < s->n_held; i++)
		unanswered += !s->held[i].answered;
	line_begin(&l, &s->log, "worker_started");
	line_i64(&l, "worker_pid", pid);
	line_u64(&l, "held", s->n_held);
	line_u64(&l, "unanswered", unanswered);
	log_emit(&s->log, &l);
	hand_over(s);
	return 0;
}

/* Serves the worker's channel until it is gone, then reaps it: its wait status. */
static int supervise(struct supervisor *s)
{
	int status = 0;
	struct line l;
	pid_t got;

	for (;;) {
		struct pollfd p[2] = {{.fd = s->chan, .events = POLLIN}, {.fd = s->sigfd, .events = POLLIN}};
		struct chan_msg m;
		int fd, r;

		/* a timeout for the prune alone: the supervisor never reads the device */
		if (poll(p, 2, prune_timeout(s)) < 0) {
			if (errno != EINTR) {
				log_error(&s->log, "poll", errno);
				sleep_ms(READ_ERROR_PAUSE_MS);
			}
			continue;
		}
		if (p[1].revents & POLLIN)
			supervisor_signal(s);
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			r = chan_recv(s->chan, &m, &fd);
			if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == ENOTCONN)))
				break; /* every end of the worker is closed: it is dead, what it sent is read */
			if (r < 0)
				log_error(&s->log, "channel", errno);
			else
				supervisor_message(s, &m, fd);
		}
		prune_if_due(s);
	}
	close(s->chan);
	s->chan = -1;
	do
		got = waitpid(s->worker, &status, 0);
	while (got < 0 && errno == EINTR);
	line_begin(&l, &s->log, "worker_died");
	line_i64(&l, "worker_pid", s->worker);
	if (got < 0) {
		line_str(&l, "why", "waitpid");
		line_i64(&l, "errno", errno);
		status = 0;
	} else if (WIFSIGNALED(status)) {
		line_i64(&l, "signal", WTERMSIG(status));
	} else if (WIFEXITED(status)) {
		line_i64(&l, "exit_code", WEXITSTATUS(status));
	}
	line_u64(&l, "held", s->n_held);
	log_emit(&s->log, &l);
	s->worker = 0;
	return status;
}

/* The device opened (or given) and the cache bound: 0, or an exit status (said on stderr). */
static int bind_cache(struct supervisor *s)
{
	const struct options *opt = s->opt;
	char cmd[PATH_MAX + 16];
	const char *names[] = {"dir", "tag", "bind"};

	if (opt->device_fd >= 0) {
		s->device_fd = opt->device_fd;
	} else {
		s->device_fd = open("/dev/cachefiles", O_RDWR | O_CLOEXEC);
		if (s->device_fd < 0) {
			int err = errno;

			log_error(&s->log, "open /dev/cachefiles", err);
			fprintf(stderr, "cdaemon: /dev/cachefiles: %s\n", strerror(err));
			return EXIT_FAILED;
		}
	}
	for (int i = 0; i < 3; i++) {
		int n, err;

		if (i == 0)
			n = snprintf(cmd, sizeof(cmd), "dir %s", opt->cache_dir);
		else if (i == 1)
			n = snprintf(cmd, sizeof(cmd), "tag %s", opt->tag);
		else
			n = snprintf(cmd, sizeof(cmd), "bind ondemand");
		if (n < 0 || (size_t)n >= sizeof(cmd)) {
			log_error(&s->log, names[i], ENAMETOOLONG);
			fprintf(stderr, "cdaemon: `%s`: too long\n", names[i]);
			return EXIT_FAILED;
		}
		if ((err = device_command(s->device_fd, cmd, (size_t)n)) != 0) {
			log_error(&s->log, names[i], err);
			fprintf(stderr, "cdaemon: `%s`: %s\n", cmd, strerror(err));
			return EXIT_FAILED;
		}
	}
	return 0;
}

/* Every anon fd is open twice (worker and supervisor) and the kernel's read(2) fails an OPEN
 * with EMFILE at the soft limit: raised to the hard one, for the supervisor and its workers. */
static void raise_fd_limit(const struct log *log)
{
	struct rlimit lim;

	if (getrlimit(RLIMIT_NOFILE, &lim) != 0) {
		log_error(log, "getrlimit", errno);
		return;
	}
	if (lim.rlim_cur == lim.rlim_max)
		return;
	lim.rlim_cur = lim.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
		log_error(log, "setrlimit", errno);
}

static int supervisor_main(const struct options *opt)
{
	struct supervisor s;
	sigset_t stop;
	struct line l;
	int err, status = EXIT_OK;

	memset(&s, 0, sizeof(s));
	s.opt = opt;
	s.chan = -1;
	s.device_fd = -1;
	s.log.who = "cdaemon-supervisor";
	s.log.pid = getpid();
	s.log.fd = open(opt->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (s.log.fd < 0) {
		fprintf(stderr, "cdaemon: %s: %s\n", opt->log_path, strerror(errno));
		return EXIT_FAILED;
	}
	/* Writes to a dead peer fail with EPIPE instead of killing (a socket standing for the device). */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		fprintf(stderr, "cdaemon: signal: %s\n", strerror(errno));
		return EXIT_FAILED;
	}
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGUSR1); /* not a stop: logged (supervisor_signal); blocked for the workers */
	if (sigprocmask(SIG_BLOCK, &stop, NULL) != 0 ||
	    (s.sigfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
		fprintf(stderr, "cdaemon: signalfd: %s\n", strerror(errno));
		return EXIT_FAILED;
	}
	raise_fd_limit(&s.log);
	if (opt->pid_file != NULL && (err = write_pid_file(opt->pid_file, s.log.pid)) != 0) {
		fprintf(stderr, "cdaemon: %s: %s\n", opt->pid_file, strerror(err));
		return EXIT_FAILED;
	}
	if ((status = bind_cache(&s)) != 0)
		return status;
	line_begin(&l, &s.log, "bound");
	line_str(&l, "cache_dir", opt->cache_dir);
	line_str(&l, "tag", opt->tag);
	line_u64(&l, "threads", opt->threads);
	line_bool(&l, "restore", !opt->no_restore);
	log_emit(&s.log, &l);

	while (!s.stopping) {
		int wstatus;

		if (start_worker(&s) != 0) {
			supervisor_pause(&s, opt->restart_delay_ms > FORK_RETRY_MS ? opt->restart_delay_ms : FORK_RETRY_MS);
			continue;
		}
		wstatus = supervise(&s);
		if (!s.stopping && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == WORKER_DEVICE_DEAD) {
			/* the cache died: no worker can serve it again */
			s.stop_why = "device dead";
			status = EXIT_FAILED;
			break;
		}
		if (!s.stopping)
			supervisor_pause(&s, opt->restart_delay_ms);
	}
	/* the anon fds before the device: the cache is withdrawn when the last fd goes */
	held_close_all(&s);
	if (close(s.device_fd) != 0)
		log_error(&s.log, "close device", errno);
	log_exit(&s.log, s.stop_why != NULL ? s.stop_why : "stopped", status);
	free(s.held);
	return status;
}

int main(int argc, char **argv)
{
	struct options opt;
	int parsed = parse_options(argc, argv, &opt);

	if (parsed == 1)
		return EXIT_OK;
	if (parsed != 0)
		return parsed;
	return supervisor_main(&opt);
}
