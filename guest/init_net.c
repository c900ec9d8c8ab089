/* slipway-init's system settings: hostname, sysctls, network interfaces and resolv.conf. */
#include "init.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/route.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IFACE_WAIT_MS 2000

void set_hostname(const char *hostname)
{
	if (sethostname(hostname, strlen(hostname)) < 0)
		say("sethostname %s: %s", hostname, strerror(errno));
}

void apply_sysctl(const char *entry)
{
	char key[256];
	snprintf(key, sizeof key, "%s", entry);
	char *eq = strchr(key, '=');
	if (!eq || strstr(key, "..")) {
		say("sysctl '%s' ignored (want key=value)", entry);
		return;
	}
	*eq = '\0';
	char path[PATH_MAX];
	int n = snprintf(path, sizeof path, "/proc/sys/%s", key);
	if (n < 0 || n >= (int)sizeof path)
		return;
	for (char *p = path + 10; *p; p++)
		if (*p == '.')
			*p = '/';
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, eq + 1, strlen(eq + 1)) < 0)
		say("sysctl %s: %s", key, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static int iface_up(int sock, const char *name)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl(sock, SIOCSIFFLAGS, &ifr);
}


static void set_inet(struct ifreq *ifr, struct in_addr a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)(void *)&ifr->ifr_addr;
	memset(sin, 0, sizeof *sin);
	sin->sin_family = AF_INET;
	sin->sin_addr = a;
}


void configure_network(const struct iface *ifaces, int nifaces)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		say("socket(AF_INET): %s; no network", strerror(errno));
		return;
	}
	if (iface_up(sock, "lo") < 0)
		say("bringing up lo: %s", strerror(errno));
	for (int i = 0; i < nifaces; i++) {
		const struct iface *ifc = &ifaces[i];
		for (int waited = 0; if_nametoindex(ifc->name) == 0; waited += 10) {
			if (waited >= IFACE_WAIT_MS) {
				say("network interface %s not found; not configured", ifc->name);
				goto next;
			}
			struct timespec ts = { 0, 10 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
		{
			struct ifreq ifr;
			memset(&ifr, 0, sizeof ifr);
			snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifc->name);
			set_inet(&ifr, ifc->addr);
			if (ioctl(sock, SIOCSIFADDR, &ifr) < 0)
				say("%s: set address: %s", ifc->name, strerror(errno));
			struct in_addr mask;
			mask.s_addr = ifc->prefix == 0 ? 0 : htonl(0xffffffffu << (32 - ifc->prefix));
			set_inet(&ifr, mask);
			if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0)
				say("%s: set netmask: %s", ifc->name, strerror(errno));
			if (iface_up(sock, ifc->name) < 0)
				say("%s: up: %s", ifc->name, strerror(errno));
			if (ifc->has_gateway) {
				struct rtentry rt;
				memset(&rt, 0, sizeof rt);
				struct sockaddr_in *dst = (struct sockaddr_in *)(void *)&rt.rt_dst;
				struct sockaddr_in *gw = (struct sockaddr_in *)(void *)&rt.rt_gateway;
				struct sockaddr_in *msk = (struct sockaddr_in *)(void *)&rt.rt_genmask;
				dst->sin_family = gw->sin_family = msk->sin_family = AF_INET;
				gw->sin_addr = ifc->gateway;
				rt.rt_flags = RTF_UP | RTF_GATEWAY;
				if (ioctl(sock, SIOCADDRT, &rt) < 0 && errno != EEXIST)
					say("%s: default route via %s: %s", ifc->name, inet_ntoa(ifc->gateway), strerror(errno));
			}
		}
next:;
	}
	close(sock);
}

void write_resolv_conf(char nameservers[][64], int count)
{
	if (count == 0)
		return;
	char buf[512];
	size_t off = 0;
	for (int i = 0; i < count; i++) {
		int n = snprintf(buf + off, sizeof buf - off, "nameserver %s\n", nameservers[i]);
		if (n < 0 || (size_t)n >= sizeof buf - off)
			break;
		off += (size_t)n;
	}
	int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		/* a read-only root: bind a file from /run over it */
		fd = open("/run/slipway/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0 && mount("/run/slipway/resolv.conf", "/etc/resolv.conf", NULL, MS_BIND, NULL) < 0)
			say("resolv.conf: %s", strerror(errno));
	}
	if (fd >= 0) {
		if (write(fd, buf, off) < 0)
			say("resolv.conf: %s", strerror(errno));
		close(fd);
	}
}
