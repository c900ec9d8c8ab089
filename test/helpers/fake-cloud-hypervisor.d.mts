/** Types for fake-cloud-hypervisor.mjs (a test stand-in, NOT Cloud Hypervisor; see that file). */

export const FAKE_VERSION: string;
/** what a real CH answers after `OK ` on a hybrid-vsock CONNECT: the host-side port it assigned */
export const FAKE_HOST_PORT: number;
