/*
 * slipway-init's parts, one job each:
 *   init.c        the program: the boot config (its limits, checked by test/guest-abi.test.ts),
 *                 boot phases, services, reaping, and the boot sequence in main
 *   init_sys.c    the console, power off, mounts and files, kernel modules, virtio port links
 *   init_disks.c  the root disk and extra disks, and the switch into the root disk
 *   init_net.c    hostname, sysctls, network interfaces, resolv.conf
 */
#ifndef SLIPWAY_INIT_H
#define SLIPWAY_INIT_H

#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/types.h>

#define NEWROOT "/newroot"
#define AGENT_PATH "/run/slipway/agent"

struct disk {
	char device[128];
	char mountpoint[128];
	char fstype[32];
	char options[128];
};

struct iface {
	char name[IFNAMSIZ];
	struct in_addr addr;
	int prefix;
	struct in_addr gateway;
	int has_gateway;
};

/* ---- init_sys.c ---- */

/* Say it on the console and in the kernel log. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Say it, then power off: init never hangs on what it cannot have. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Stop every process, sync, and power off or reboot; never returns. */
void power_off(int reboot_instead) __attribute__((noreturn));
uint64_t now_ns(void);
int mkdir_p(const char *path, mode_t mode);
void mount_or_die(const char *src, const char *target, const char *type, unsigned long flags, const char *data);
/* The whole file into buf; -1 with errno (EFBIG when it does not fit in cap). */
ssize_t read_file(const char *path, char *buf, size_t cap);
void load_modules(void);
void link_virtio_ports(void);

/* ---- init_disks.c ---- */

void mount_disk(const struct disk *d, const char *target, int is_root);
/* With the root disk on NEWROOT: mount the extra disks in it, copy the agent to AGENT_PATH, move
 * the API file systems over and make it `/`. */
void enter_root(const struct disk *disks, int ndisks);

/* ---- init_net.c ---- */

void set_hostname(const char *hostname);
/* One "key=value" sysctl, written to /proc/sys/key (dots as slashes). */
void apply_sysctl(const char *entry);
void configure_network(const struct iface *ifaces, int nifaces);
void write_resolv_conf(char nameservers[][64], int count);

#endif
