/*
 * Processes started by EXEC: the fork and exec (with its failure reported through a close-on-exec
 * pipe), their stdout and stderr pipes read into STDOUT and STDERR frames, their stdin fed from
 * STDIN frames, SIGNAL to their process group, and EXIT once a process is reaped and its output
 * has ended (so EXIT is always the last frame of its id).
 */
#include "agent.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static struct proc *find_proc(struct agent *a, const struct conn *c, uint32_t id)
{
	for (struct proc *p = a->procs; p; p = p->next)
		if (p->conn == c && p->id == id)
			return p;
	return NULL;
}

static void pipe_set_registered(struct agent *a, struct output_pipe *pipe, bool want)
{
	if (pipe->fd < 0 || pipe->registered == want)
		return;
	/* a paused pipe leaves epoll entirely: EPOLLHUP is reported even with no events asked for,
	 * and a writer that has exited would make the loop spin */
	if (epoll_op(a, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, pipe->fd, EPOLLIN, &pipe->watch, "process output pipe"))
		pipe->registered = want;
}

void proc_set_output_registered(struct proc *p, bool want)
{
	pipe_set_registered(p->agent, &p->out, want);
	pipe_set_registered(p->agent, &p->err, want);
}

void proc_close_stdin(struct proc *p, enum stdin_state new_state)
{
	if (p->stdin_fd >= 0) {
		if (p->stdin_registered && epoll_op(p->agent, EPOLL_CTL_DEL, p->stdin_fd, 0, &p->stdin_watch, "process stdin pipe"))
			p->stdin_registered = false;
		close_fd(&p->stdin_fd, "process stdin pipe");
	}
	if (p->conn)
		p->conn->stdin_queued -= p->stdin_queue.bytes;
	queue_clear(&p->stdin_queue);
	p->stdin_state = new_state;
	if (p->conn)
		conn_update_flow(p->conn);
}

/* Send EXIT and retire the process once its output has ended and it has been reaped. */
static void proc_maybe_finish(struct proc *p)
{
	if (p->dead || !p->reaped || p->out.fd >= 0 || p->err.fd >= 0)
		return;
	if (p->stdin_state == STDIN_OPEN || p->stdin_state == STDIN_CLOSE_PENDING)
		proc_close_stdin(p, STDIN_BROKEN);
	if (p->conn) {
		uint8_t status[8];
		put_u32(status, (uint32_t)p->exit_status);
		put_u32(status + 4, (uint32_t)p->exit_signal);
		conn_send(p->conn, REP_EXIT, p->id, status, sizeof status);
	}
	struct agent *a = p->agent;
	/* freed after this batch of events: another event in it may still point here */
	p->dead = true;
	LIST_RETIRE(a->procs, a->dead_procs, p);
}

static void proc_close_output(struct proc *p, struct output_pipe *pipe)
{
	pipe_set_registered(p->agent, pipe, false);
	close_fd(&pipe->fd, "process output pipe");
	proc_maybe_finish(p);
}


/* A killed command whose leader is reaped: take what its pipes hold now, then stop waiting for
 * the rest (a process that left its group may hold them open for ever) and finish. */
static void proc_abandon_output(struct proc *p)
{
	if (!p->killed || !p->reaped)
		return;
	struct output_pipe *pipes[] = { &p->out, &p->err };
	for (size_t i = 0; i < sizeof pipes / sizeof pipes[0] && !p->dead; i++) {
		if (pipes[i]->fd >= 0 && pipes[i]->registered)
			proc_read_output(p, pipes[i]);
		if (!p->dead && pipes[i]->fd >= 0)
			proc_close_output(p, pipes[i]);
	}
}

void proc_read_output(struct proc *p, struct output_pipe *pipe)
{
	struct agent *a = p->agent;
	for (int round = 0; round < READS_PER_EVENT; round++) {
		/* sending may have paused this pipe (queue over the high mark) */
		if (p->dead || pipe->fd < 0 || !pipe->registered)
			return;
		ssize_t n = TEMP_FAILURE_RETRY(read(pipe->fd, a->scratch, sizeof a->scratch));
		if (n < 0) {
			if (errno == EAGAIN)
				return;
			log_errno("read output of process %d", (int)p->pid);
			n = 0; /* nothing more will come from it */
		}
		if (n == 0) {
			proc_close_output(p, pipe);
			return;
		}
		if (p->conn)
			conn_send(p->conn, pipe->reply_type, p->id, a->scratch, (size_t)n);
	}
}

void proc_write_stdin(struct proc *p)
{
	struct byte_queue *q = &p->stdin_queue;
	while (q->head && p->stdin_fd >= 0) {
		struct chunk *ch = q->head;
		ssize_t n = TEMP_FAILURE_RETRY(write(p->stdin_fd, ch->bytes + ch->sent, ch->len - ch->sent));
		if (n < 0) {
			if (errno == EAGAIN)
				break;
			/* EPIPE: the process closed its stdin or exited; what it did not read is dropped,
			 * as it would be with a shell pipe */
			if (errno != EPIPE)
				log_errno("write stdin of process %d", (int)p->pid);
			proc_close_stdin(p, STDIN_BROKEN);
			return;
		}
		queue_consume(q, (size_t)n);
		if (p->conn)
			p->conn->stdin_queued -= (size_t)n;
	}
	if (!q->head && p->stdin_state == STDIN_CLOSE_PENDING) {
		proc_close_stdin(p, STDIN_CLOSED);
		return;
	}
	bool want = q->head != NULL;
	if (p->stdin_fd >= 0 && want != p->stdin_registered &&
	    epoll_op(p->agent, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, p->stdin_fd, EPOLLOUT, &p->stdin_watch, "process stdin pipe"))
		p->stdin_registered = want;
	if (p->conn)
		conn_update_flow(p->conn);
}

void free_proc(struct proc *p)
{
	close_fd(&p->out.fd, "process stdout pipe");
	close_fd(&p->err.fd, "process stderr pipe");
	close_fd(&p->stdin_fd, "process stdin pipe");
	queue_clear(&p->stdin_queue);
	free(p);
}

/* ---- requests ---- */

/* What the child tells the parent through the close-on-exec status pipe when it cannot exec. */
struct exec_failure {
	int32_t step; /* enum exec_step */
	int32_t err;
};

enum exec_step {
	STEP_SETSID,
	STEP_DUP2,
	STEP_CHDIR,
	STEP_EXECVE,
};

static const char *const step_names[] = {
	[STEP_SETSID] = "setsid",
	[STEP_DUP2] = "dup2",
	[STEP_CHDIR] = "chdir",
	[STEP_EXECVE] = "execve",
};

struct child_setup {
	char **argv;
	char **envp;
	const char *cwd;
	int stdin_fd;
	int stdout_fd;
	int stderr_fd;
	int status_fd;
};

/* In the forked child: set up, exec, or report which step failed and why, and _exit. (The agent is
 * single-threaded, so the child may call anything; execvpe searching PATH allocates.) */
static void child_exec(const struct child_setup *s) __attribute__((noreturn));
static void child_exec(const struct child_setup *s)
{
	struct exec_failure failure = { .step = STEP_SETSID };
	/* the agent blocks the signals its signalfd reads and ignores SIGPIPE; a mask and ignored
	 * signals survive execve, so give the program the defaults it expects */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	if (setsid() < 0)
		goto fail;
	failure.step = STEP_DUP2;
	/* the agent keeps 0, 1 and 2 open, so these pipe ends are all above 2 and dup2 cannot clobber
	 * one of them; they are close-on-exec, the copies are not */
	if (dup2(s->stdin_fd, STDIN_FILENO) < 0 || dup2(s->stdout_fd, STDOUT_FILENO) < 0 || dup2(s->stderr_fd, STDERR_FILENO) < 0)
		goto fail;
	failure.step = STEP_CHDIR;
	if (chdir(s->cwd) < 0)
		goto fail;
	failure.step = STEP_EXECVE;
	execvpe(s->argv[0], s->argv, s->envp);
fail:
	failure.err = errno;
	if (write(s->status_fd, &failure, sizeof failure) < 0) {
		/* the parent then sees EOF and takes it for success; it will get the exit status 127 */
	}
	_exit(127);
}

static bool make_pipe(int fds[2], const char *what, struct conn *c, uint32_t id)
{
	if (pipe2(fds, O_CLOEXEC) < 0) {
		int err = errno;
		log_errno("pipe2 for %s", what);
		send_errno(c, id, err, "EXEC: pipe2 for %s", what);
		return false;
	}
	return true;
}

void handle_exec(struct conn *c, const struct frame *f)
{
	struct agent *a = c->agent;
	if (!check_flags(c, f, EXEC_FLAG_STDIN, "EXEC"))
		return;
	if (find_proc(a, c, f->id)) {
		send_error(c, f->id, EEXIST, "EXEC: id %u is already running a process", f->id);
		return;
	}
	struct reader r = { .p = f->payload, .left = f->len };
	uint32_t argc = 0, envc = 0;
	char **argv = read_string_list(&r, "argv", &argc);
	char **envp = read_string_list(&r, "env", &envc);
	char *cwd = read_string(&r, "cwd");
	reader_expect_end(&r, "EXEC");
	int fds[4][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 }, { -1, -1 } };
	enum { IN, OUT, ERR, STATUS };
	int null_fd = -1;
	struct proc *p = NULL;

	if (!check_read(c, f, &r, "EXEC"))
		goto out;
	if (argc == 0) {
		send_error(c, f->id, EINVAL, "EXEC: argv is empty");
		goto out;
	}
	for (uint32_t i = 0; i < envc; i++) {
		const char *eq = strchr(envp[i], '=');
		if (!eq || eq == envp[i]) {
			send_error(c, f->id, EINVAL, "EXEC: env[%u] is not KEY=VALUE", i);
			goto out;
		}
	}
	p = calloc(1, sizeof *p);
	if (!p) {
		send_error(c, f->id, ENOMEM, "EXEC: out of memory");
		goto out;
	}
	bool with_stdin = f->flags & EXEC_FLAG_STDIN;
	if (with_stdin) {
		if (!make_pipe(fds[IN], "stdin", c, f->id))
			goto out;
	} else {
		null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null_fd < 0) {
			int err = errno;
			log_errno("open /dev/null");
			send_errno(c, f->id, err, "EXEC: open /dev/null");
			goto out;
		}
	}
	if (!make_pipe(fds[OUT], "stdout", c, f->id) || !make_pipe(fds[ERR], "stderr", c, f->id) || !make_pipe(fds[STATUS], "exec status", c, f->id))
		goto out;

	struct child_setup setup = {
		.argv = argv,
		.envp = envc > 0 ? envp : environ,
		.cwd = cwd[0] ? cwd : "/",
		.stdin_fd = with_stdin ? fds[IN][0] : null_fd,
		.stdout_fd = fds[OUT][1],
		.stderr_fd = fds[ERR][1],
		.status_fd = fds[STATUS][1],
	};
	pid_t pid = fork();
	if (pid < 0) {
		int err = errno;
		log_errno("fork");
		send_errno(c, f->id, err, "EXEC: fork");
		goto out;
	}
	if (pid == 0)
		child_exec(&setup);

	/* the child's ends; then the status pipe reads EOF exactly when execve succeeds */
	close_fd(&fds[IN][0], "child stdin");
	close_fd(&null_fd, "/dev/null");
	close_fd(&fds[OUT][1], "child stdout");
	close_fd(&fds[ERR][1], "child stderr");
	close_fd(&fds[STATUS][1], "exec status");
	struct exec_failure failure;
	size_t got = 0;
	/* blocking, but only for as long as the child takes to reach execve */
	while (got < sizeof failure) {
		ssize_t n = TEMP_FAILURE_RETRY(read(fds[STATUS][0], (char *)&failure + got, sizeof failure - got));
		if (n < 0)
			log_errno("read exec status of process %d", (int)pid);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got == sizeof failure) {
		/* reap it here, so the SIGCHLD handler never sees a pid it does not know */
		if (TEMP_FAILURE_RETRY(waitpid(pid, NULL, 0)) < 0)
			log_errno("waitpid %d", (int)pid);
		const char *step = failure.step >= 0 && failure.step <= STEP_EXECVE ? step_names[failure.step] : "exec";
		const char *subject = failure.step == STEP_CHDIR ? setup.cwd : argv[0];
		send_errno(c, f->id, failure.err, "EXEC: %s %s", step, subject);
		goto out;
	}

	p->agent = a;
	p->conn = c;
	p->id = f->id;
	p->pid = pid;
	p->out = (struct output_pipe){ .watch = { WATCH_PROC_STDOUT, p }, .fd = fds[OUT][0], .reply_type = REP_STDOUT };
	p->err = (struct output_pipe){ .watch = { WATCH_PROC_STDERR, p }, .fd = fds[ERR][0], .reply_type = REP_STDERR };
	p->stdin_watch = (struct watch){ WATCH_PROC_STDIN, p };
	p->stdin_fd = fds[IN][1];
	p->stdin_state = with_stdin ? STDIN_OPEN : STDIN_NONE;
	fds[OUT][0] = fds[ERR][0] = fds[IN][1] = -1;
	/* a failure here leaves the fd blocking; reads only happen after EPOLLIN, so at worst a read
	 * waits for data that is already announced */
	set_nonblocking(p->out.fd, "stdout pipe");
	set_nonblocking(p->err.fd, "stderr pipe");
	if (p->stdin_fd >= 0)
		set_nonblocking(p->stdin_fd, "stdin pipe");
	LIST_PUSH(a->procs, p);
	uint8_t pid_le[4];
	put_u32(pid_le, (uint32_t)pid);
	conn_send(c, REP_STARTED, f->id, pid_le, sizeof pid_le);
	/* STARTED is queued before any output can be. While the connection's output is paused the
	 * pipes wait for conn_update_flow; once it is closed they are read and dropped */
	if (c->closed || !c->output_paused)
		proc_set_output_registered(p, true);
	p = NULL;

out:
	for (int i = 0; i < 4; i++) {
		close_fd(&fds[i][0], "exec pipe");
		close_fd(&fds[i][1], "exec pipe");
	}
	close_fd(&null_fd, "/dev/null");
	free(p);
	free_string_list(argv);
	free_string_list(envp);
	free(cwd);
}

void handle_stdin(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "STDIN"))
		return;
	struct proc *p = find_proc(c->agent, c, f->id);
	if (!p) {
		send_error(c, f->id, ESRCH, "STDIN: no process with id %u", f->id);
		return;
	}
	switch (p->stdin_state) {
	case STDIN_NONE:
		send_error(c, f->id, EBADF, "STDIN: process %u was started without stdin", f->id);
		return;
	case STDIN_CLOSE_PENDING:
	case STDIN_CLOSED:
		send_error(c, f->id, EBADF, "STDIN: stdin of process %u is already closed", f->id);
		return;
	case STDIN_BROKEN:
		return; /* the process stopped reading; drop it, as a pipe would */
	case STDIN_OPEN:
		break;
	}
	if (f->len == 0) {
		p->stdin_state = STDIN_CLOSE_PENDING;
		proc_write_stdin(p);
		return;
	}
	struct chunk *ch = chunk_new(f->len);
	if (!ch) {
		send_error(c, f->id, ENOMEM, "STDIN: out of memory");
		return;
	}
	memcpy(ch->bytes, f->payload, f->len);
	queue_push(&p->stdin_queue, ch);
	c->stdin_queued += f->len;
	proc_write_stdin(p);
}

void handle_signal(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "SIGNAL"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	int32_t sig = (int32_t)read_u32(&r, "signal");
	reader_expect_end(&r, "SIGNAL");
	if (!check_read(c, f, &r, "SIGNAL"))
		return;
	struct proc *p = find_proc(c->agent, c, f->id);
	if (!p) {
		send_error(c, f->id, ESRCH, "SIGNAL: no process with id %u", f->id);
		return;
	}
	if (sig < 0 || sig >= NSIG) {
		send_error(c, f->id, EINVAL, "SIGNAL: %d is not a signal number", sig);
		return;
	}
	/* The command runs in its own session (setsid in child_exec), so its process group is its
	 * pid: signal the whole group (a shell's children too), also after the leader was reaped.
	 * Linux does not reuse a pid while it still names a live process group, so -pid reaches only
	 * this command's processes; once the group is empty, kill says ESRCH. */
	if (kill(-p->pid, sig) < 0) {
		int err = errno;
		if (err == ESRCH && p->reaped)
			send_error(c, f->id, ESRCH, "SIGNAL: process %u and its process group have exited", f->id);
		else
			send_errno(c, f->id, err, "SIGNAL: kill -%d", (int)p->pid);
		return;
	}
	send_ok(c, f->id);
	if (sig == SIGKILL) {
		p->killed = true;
		proc_abandon_output(p);
	}
}

/* ---- reaping ---- */

void reap_children(struct agent *a)
{
	for (;;) {
		int status;
		pid_t pid = TEMP_FAILURE_RETRY(waitpid(-1, &status, WNOHANG));
		if (pid == 0)
			return;
		if (pid < 0) {
			if (errno != ECHILD)
				log_errno("waitpid");
			return;
		}
		struct proc *p = NULL;
		for (struct proc *q = a->procs; q; q = q->next)
			if (q->pid == pid && !q->reaped)
				p = q;
		if (!p)
			continue;
		p->reaped = true;
		if (WIFSIGNALED(status)) {
			p->exit_status = -1;
			p->exit_signal = WTERMSIG(status);
		} else {
			p->exit_status = WEXITSTATUS(status);
			p->exit_signal = 0;
		}
		proc_abandon_output(p);
		proc_maybe_finish(p);
	}
}
