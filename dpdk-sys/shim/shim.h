/* Out-of-line wrappers for DPDK's static inline functions and thread-local macros. */
#ifndef ROUTER_DPDK_SHIM_H
#define ROUTER_DPDK_SHIM_H
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_version.h>
#include <rte_pdump.h>

uint16_t shim_rte_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_rte_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *shim_rte_pktmbuf_alloc(struct rte_mempool *mp);
int shim_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int n);
void shim_rte_pktmbuf_free(struct rte_mbuf *m);
int shim_rte_errno(void);
unsigned int shim_rte_lcore_id(void);
unsigned int shim_rte_mempool_avail_count(const struct rte_mempool *mp);
uint16_t shim_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t shim_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
#endif
