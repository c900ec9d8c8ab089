/*
 * slipway-init: PID 1 of a slipway guest, in the initramfs.
 *
 * Mounts the API filesystems, reads the boot config from fw_cfg (falling back to the kernel
 * command line), mounts the root disk and any extra disks, switches into the root disk while
 * staying PID 1 (and so the reaper of every orphan), sets the hostname, configures network
 * interfaces, applies sysctls, starts the agent and then the configured services in parallel,
 * reaps zombies, and powers off on request (SIGUSR2 from the agent) or on a fatal error.
 * It never hangs: anything it needs and cannot have is said on the console, then it powers off.
 *
 * Boot phases are recorded as CLOCK_BOOTTIME nanoseconds in /run/slipway/boot-times for the agent
 * to report. The config format is documented in docs/guest.md.
 *
 * Signals to PID 1: SIGUSR2 power off, SIGTERM reboot, SIGCHLD reap (the agent is restarted if it
 * dies), SIGINT (Ctrl-Alt-Del) reboot.
 *
 * The parts of init, one job each, are listed in init.h.
 */
#include "init.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FW_CFG_PATH "/sys/firmware/qemu_fw_cfg/by_name/opt/slipway/config/raw"
#define CONFIG_MAX_BYTES (64 * 1024)
#define MAX_DISKS 16
#define MAX_IFACES 8
#define MAX_DNS 4
#define MAX_SYSCTLS 64
#define MAX_SERVICES 32
#define MAX_ENV 128
/* the longest value of one entry; src/guest/boot-config.ts holds the host's copy of every limit */
#define ENV_BYTES 4096
#define SERVICE_BYTES 4096
#define SYSCTL_BYTES 256
#define LINE_BYTES 8192
#define SERVICE_WORDS 31
#define MAX_PHASES 16
#define BOOT_TIMES_PATH "/run/slipway/boot-times"

struct config {
	char hostname[65];
	struct disk root;
	struct disk disks[MAX_DISKS];
	int ndisks;
	struct iface ifaces[MAX_IFACES];
	int nifaces;
	char dns[MAX_DNS][64];
	int ndns;
	char sysctls[MAX_SYSCTLS][SYSCTL_BYTES];
	int nsysctls;
	char services[MAX_SERVICES][SERVICE_BYTES];
	int nservices;
	char env[MAX_ENV][ENV_BYTES];
	int nenv;
	int nlines; /* entries read, for the end=<n> check */
	int end_seen;
	int verbose;
	char source[16]; /* "fw_cfg", "cmdline" or "defaults" */
};

struct phase {
	const char *name;
	uint64_t ns;
};

struct init_state {
	struct config cfg;
	struct phase phases[MAX_PHASES];
	int nphases;
	pid_t agent_pid;
	int agent_restarts;
	sigset_t handled;
};

static void mark(struct init_state *st, const char *name)
{
	if (st->nphases < MAX_PHASES) {
		st->phases[st->nphases].name = name;
		st->phases[st->nphases].ns = now_ns();
		st->nphases++;
	}
}

static void write_phases(const struct init_state *st)
{
	char buf[2048];
	size_t off = 0;
	for (int i = 0; i < st->nphases && off < sizeof buf; i++) {
		int n = snprintf(buf + off, sizeof buf - off, "phase.%s %llu\n", st->phases[i].name, (unsigned long long)st->phases[i].ns);
		if (n < 0 || (size_t)n >= sizeof buf - off)
			break;
		off += (size_t)n;
	}
	int fd = open(BOOT_TIMES_PATH ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		say("cannot write %s: %s", BOOT_TIMES_PATH, strerror(errno));
		return;
	}
	if (write(fd, buf, off) != (ssize_t)off)
		say("short write to %s", BOOT_TIMES_PATH);
	close(fd);
	if (rename(BOOT_TIMES_PATH ".tmp", BOOT_TIMES_PATH) < 0)
		say("rename %s: %s", BOOT_TIMES_PATH, strerror(errno));
}

/* ---------- config ---------- */

/* Nothing in a boot config is cut or dropped: what does not fit stops the boot, saying why. */
static void copy_field(char *dst, size_t cap, const char *src, size_t len, const char *what)
{
	if (len >= cap)
		die("config: %s too long (%zu bytes, at most %zu)", what, len, cap - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

/* Append to a list of at most `max` entries of `cap` bytes each, `*n` of them in use: a config
 * with more entries than that, or a longer one, is refused. */
static void add_entry(char *list, size_t cap, int *n, int max, const char *src, size_t len, const char *what)
{
	if (*n >= max)
		die("config: more than %d %s entries", max, what);
	copy_field(list + (size_t)*n * cap, cap, src, len, what);
	(*n)++;
}

/* "dev:mountpoint[:fstype[:options]]" */
static int parse_disk(struct disk *d, const char *v)
{
	memset(d, 0, sizeof *d);
	const char *fields[4] = { v, NULL, NULL, NULL };
	size_t lens[4] = { 0, 0, 0, 0 };
	int n = 0;
	const char *p = v;
	for (;;) {
		const char *colon = (n < 3) ? strchr(p, ':') : NULL;
		if (!colon) {
			lens[n] = strlen(p);
			break;
		}
		lens[n] = (size_t)(colon - p);
		p = colon + 1;
		fields[++n] = p;
	}
	if (n < 1 || lens[0] == 0 || lens[1] == 0 || fields[1][0] != '/')
		return -1;
	copy_field(d->device, sizeof d->device, fields[0], lens[0], "disk device");
	copy_field(d->mountpoint, sizeof d->mountpoint, fields[1], lens[1], "disk mount point");
	if (n >= 2)
		copy_field(d->fstype, sizeof d->fstype, fields[2], lens[2], "disk fstype");
	if (n >= 3)
		copy_field(d->options, sizeof d->options, fields[3], lens[3], "disk options");
	return d->device[0] && d->mountpoint[0] ? 0 : -1;
}

/* "name addr/prefix [gateway]", separated by spaces or commas */
static int parse_iface(struct iface *ifc, const char *v)
{
	char buf[256];
	if (snprintf(buf, sizeof buf, "%s", v) >= (int)sizeof buf)
		return -1;
	for (char *p = buf; *p; p++)
		if (*p == ',')
			*p = ' ';
	char *save = NULL;
	char *name = strtok_r(buf, " ", &save);
	char *cidr = strtok_r(NULL, " ", &save);
	char *gw = strtok_r(NULL, " ", &save);
	if (!name || !cidr || strlen(name) >= IFNAMSIZ)
		return -1;
	memset(ifc, 0, sizeof *ifc);
	memcpy(ifc->name, name, strlen(name) + 1);
	char *slash = strchr(cidr, '/');
	ifc->prefix = 24;
	if (slash) {
		*slash = '\0';
		char *end = NULL;
		long prefix = strtol(slash + 1, &end, 10);
		if (!end || *end != '\0' || prefix < 0 || prefix > 32)
			return -1;
		ifc->prefix = (int)prefix;
	}
	if (inet_pton(AF_INET, cidr, &ifc->addr) != 1)
		return -1;
	if (gw) {
		if (inet_pton(AF_INET, gw, &ifc->gateway) != 1)
			return -1;
		ifc->has_gateway = 1;
	}
	return 0;
}

static void config_line(struct config *c, const char *line, size_t len)
{
	static char buf[LINE_BYTES];
	if (len == 0)
		return;
	if (len >= sizeof buf)
		die("config: a line of %zu bytes is too long (at most %zu)", len, sizeof buf - 1);
	if (c->end_seen)
		die("config: a line after end=");
	memcpy(buf, line, len);
	buf[len] = '\0';
	if (buf[0] == '#')
		return;
	char *eq = strchr(buf, '=');
	if (!eq) {
		say("config: line without '=' ignored: %.60s", buf);
		return;
	}
	*eq = '\0';
	const char *key = buf;
	const char *v = eq + 1;
	size_t vlen = strlen(v);
	if (strcmp(key, "end") == 0) {
		/* the host's count of the entries before this line: a config cut short is refused */
		char *endp = NULL;
		long want = strtol(v, &endp, 10);
		if (!endp || *endp != '\0' || want != c->nlines)
			die("config: end=%s but %d entries were read (the config was cut short)", v, c->nlines);
		c->end_seen = 1;
		return;
	}
	c->nlines++;
	if (strcmp(key, "version") == 0) {
		if (strcmp(v, "1") != 0)
			die("config: version %s is not supported (this init reads version 1)", v);
	} else if (strcmp(key, "hostname") == 0) {
		copy_field(c->hostname, sizeof c->hostname, v, vlen, "hostname");
	} else if (strcmp(key, "root") == 0) {
		copy_field(c->root.device, sizeof c->root.device, v, vlen, "root");
	} else if (strcmp(key, "rootfstype") == 0) {
		copy_field(c->root.fstype, sizeof c->root.fstype, v, vlen, "rootfstype");
	} else if (strcmp(key, "rootflags") == 0) {
		copy_field(c->root.options, sizeof c->root.options, v, vlen, "rootflags");
	} else if (strcmp(key, "disk") == 0) {
		if (c->ndisks >= MAX_DISKS || parse_disk(&c->disks[c->ndisks], v) < 0)
			die("config: bad or too many disk entries (%s)", v);
		c->ndisks++;
	} else if (strcmp(key, "net") == 0) {
		if (c->nifaces >= MAX_IFACES || parse_iface(&c->ifaces[c->nifaces], v) < 0)
			die("config: bad net entry '%s' (want: name address/prefix [gateway])", v);
		c->nifaces++;
	} else if (strcmp(key, "dns") == 0) {
		add_entry((char *)c->dns, sizeof c->dns[0], &c->ndns, MAX_DNS, v, vlen, "dns");
	} else if (strcmp(key, "sysctl") == 0) {
		add_entry((char *)c->sysctls, sizeof c->sysctls[0], &c->nsysctls, MAX_SYSCTLS, v, vlen, "sysctl");
	} else if (strcmp(key, "service") == 0) {
		add_entry((char *)c->services, sizeof c->services[0], &c->nservices, MAX_SERVICES, v, vlen, "service");
	} else if (strcmp(key, "env") == 0) {
		if (!strchr(v, '='))
			die("config: env entry '%.60s' is not NAME=value", v);
		add_entry((char *)c->env, sizeof c->env[0], &c->nenv, MAX_ENV, v, vlen, "env");
	} else if (strcmp(key, "verbose") == 0) {
		c->verbose = strcmp(v, "1") == 0;
	} else {
		say("config: unknown key '%s' ignored", key);
	}
}

static void config_parse(struct config *c, const char *text, size_t len)
{
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || text[i] == '\n') {
			size_t end = i;
			if (end > start && text[end - 1] == '\r')
				end--;
			config_line(c, text + start, end - start);
			start = i + 1;
		}
	}
}

static int b64_value(int ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '+' || ch == '-')
		return 62;
	if (ch == '/' || ch == '_')
		return 63;
	return -1;
}

static ssize_t b64_decode(const char *in, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '=')
			break;
		int v = b64_value((unsigned char)in[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= cap)
				return -1;
			out[o++] = (char)((acc >> bits) & 0xff);
		}
	}
	return (ssize_t)o;
}

/* slipway.config=<base64 of the config file> or slipway.<key>=<value> tokens */
static int config_from_cmdline(struct config *c)
{
	static char cmdline[4096];
	ssize_t n = read_file("/proc/cmdline", cmdline, sizeof cmdline - 1);
	if (n < 0)
		return 0;
	cmdline[n] = '\0';
	int found = 0;
	char *save = NULL;
	for (char *tok = strtok_r(cmdline, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
		if (strncmp(tok, "slipway.", 8) != 0)
			continue;
		const char *kv = tok + 8;
		if (strncmp(kv, "config=", 7) == 0) {
			static char decoded[4096];
			ssize_t m = b64_decode(kv + 7, strlen(kv + 7), decoded, sizeof decoded);
			if (m < 0)
				die("kernel command line: slipway.config is not valid base64");
			config_parse(c, decoded, (size_t)m);
			/* the kernel cuts a long command line without a word: the host ends the config
			 * with end=<entries>, and a config without it is taken as cut */
			if (!c->end_seen)
				die("kernel command line: slipway.config has no end= line (cut short by the kernel's command line limit?)");
		} else {
			config_line(c, kv, strlen(kv));
		}
		found = 1;
	}
	return found;
}

static void load_config(struct config *c)
{
	memset(c, 0, sizeof *c);
	snprintf(c->hostname, sizeof c->hostname, "slipway");
	snprintf(c->root.device, sizeof c->root.device, "/dev/vda");
	snprintf(c->root.mountpoint, sizeof c->root.mountpoint, "/");
	static char text[CONFIG_MAX_BYTES];
	ssize_t n = read_file(FW_CFG_PATH, text, sizeof text);
	if (n >= 0) {
		config_parse(c, text, (size_t)n);
		snprintf(c->source, sizeof c->source, "fw_cfg");
	} else if (errno == EFBIG) {
		die("boot config in fw_cfg is larger than %d bytes", CONFIG_MAX_BYTES);
	} else if (config_from_cmdline(c)) {
		snprintf(c->source, sizeof c->source, "cmdline");
	} else {
		snprintf(c->source, sizeof c->source, "defaults");
	}
}

/*
 * Mount the root disk, move /dev, /proc, /sys, /run and /tmp into it, and make it `/`. The
 * initramfs stays in memory (it is a few hundred KiB); init keeps PID 1 throughout.
 */
static void switch_root(struct init_state *st)
{
	mount_disk(&st->cfg.root, NEWROOT, 1);
	mark(st, "root_mounted");
	enter_root(st->cfg.disks, st->cfg.ndisks);
	mark(st, "switch_root");
}

/* ---------- processes ---------- */

static char *const *child_env(const struct config *c)
{
	static char *envp[MAX_ENV + 4];
	static char path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	static char home[] = "HOME=/root";
	static char term[] = "TERM=linux";
	int n = 0;
	envp[n++] = path;
	envp[n++] = home;
	envp[n++] = term;
	for (int i = 0; i < c->nenv && n < MAX_ENV + 3; i++)
		envp[n++] = (char *)c->env[i];
	envp[n] = NULL;
	return envp;
}

static pid_t spawn(struct init_state *st, char *const argv[], int quiet)
{
	pid_t pid = fork();
	if (pid < 0) {
		say("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid();
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, STDIN_FILENO);
			if (quiet) {
				dup2(null, STDOUT_FILENO);
				dup2(null, STDERR_FILENO);
			}
		}
		execve(argv[0], argv, child_env(&st->cfg));
		say("exec %s: %s", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

static void start_agent(struct init_state *st)
{
	char *argv[] = { (char *)AGENT_PATH, NULL };
	st->agent_pid = spawn(st, argv, 0);
}

static void start_services(struct init_state *st)
{
	struct stat sb;
	int have_sh = stat("/bin/sh", &sb) == 0;
	for (int i = 0; i < st->cfg.nservices; i++) {
		if (have_sh) {
			char *argv[] = { (char *)"/bin/sh", (char *)"-c", st->cfg.services[i], NULL };
			spawn(st, argv, !st->cfg.verbose);
		} else {
			static char copy[SERVICE_BYTES];
			snprintf(copy, sizeof copy, "%s", st->cfg.services[i]);
			char *argv[SERVICE_WORDS + 1];
			int n = 0;
			char *save = NULL;
			for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
				if (n == SERVICE_WORDS)
					die("service '%.60s...' has more than %d words and the root disk has no /bin/sh to run it", st->cfg.services[i], SERVICE_WORDS);
				argv[n++] = w;
			}
			argv[n] = NULL;
			if (n > 0)
				spawn(st, argv, !st->cfg.verbose);
		}
	}
}

static void reap(struct init_state *st, int shutting_down)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			return;
		if (pid == st->agent_pid && !shutting_down) {
			st->agent_pid = -1;
			if (st->agent_restarts++ < 20) {
				say("agent exited (status %d); restarting it", status);
				struct timespec ts = { 0, 100 * 1000 * 1000 };
				nanosleep(&ts, NULL);
				start_agent(st);
			} else {
				say("agent keeps exiting; not restarting it again");
			}
		}
	}
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	struct init_state *st = calloc(1, sizeof *st);
	if (!st)
		return 1;
	if (getpid() != 1) {
		fprintf(stderr, "slipway-init must run as PID 1\n");
		return 2;
	}
	mark(st, "init_start");
	sigemptyset(&st->handled);
	sigaddset(&st->handled, SIGCHLD);
	sigaddset(&st->handled, SIGTERM);
	sigaddset(&st->handled, SIGUSR2);
	sigaddset(&st->handled, SIGINT);
	sigprocmask(SIG_BLOCK, &st->handled, NULL);
	/* Ctrl-Alt-Del is delivered as SIGINT instead of an immediate reboot */
	reboot(RB_DISABLE_CAD);

	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	mount_or_die("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mkdir_p("/dev/pts", 0755);
	mkdir_p("/dev/shm", 0755);
	if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666") < 0)
		say("mount devpts: %s", strerror(errno));
	if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
		say("mount /dev/shm: %s", strerror(errno));
	if (mkdir_p("/run/slipway", 0755) < 0)
		die("mkdir /run/slipway: %s", strerror(errno));
	load_modules();
	mark(st, "mounts");

	load_config(&st->cfg);
	if (st->cfg.verbose)
		say("config from %s; root %s", st->cfg.source, st->cfg.root.device);
	mark(st, "config");

	switch_root(st);
	set_hostname(st->cfg.hostname);
	for (int i = 0; i < st->cfg.nsysctls; i++)
		apply_sysctl(st->cfg.sysctls[i]);
	configure_network(st->cfg.ifaces, st->cfg.nifaces);
	write_resolv_conf(st->cfg.dns, st->cfg.ndns);
	mark(st, "network");
	link_virtio_ports();
	start_agent(st);
	mark(st, "agent_started");
	write_phases(st);
	start_services(st);
	if (st->cfg.nservices > 0) {
		mark(st, "services_started");
		write_phases(st);
	}

	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(&st->handled, &info);
		if (sig < 0)
			continue;
		switch (sig) {
		case SIGCHLD:
			reap(st, 0);
			break;
		case SIGUSR2:
			say("power off requested");
			power_off(0);
		case SIGTERM:
		case SIGINT:
			say("reboot requested");
			power_off(1);
		default:
			break;
		}
	}
}
