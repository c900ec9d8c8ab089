/** Types for fake-cloud-hypervisor.mjs (a test stand-in, NOT Cloud Hypervisor; see that file). */

export const FAKE_VERSION: string;
/** what a real CH answers after `OK ` on a hybrid-vsock CONNECT: the host-side port it assigned */
export const FAKE_HOST_PORT: number;
/** the first version the stand-in takes RestoreConfig.memory_restore_mode (and resume) from, as Cloud Hypervisor v52 */
export const FAKE_ON_DEMAND_SINCE: number;
/** what a snapshot's state.json written by the stand-in says it is (not Cloud Hypervisor's format) */
export const FAKE_STATE_MARK: string;
