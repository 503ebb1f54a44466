// SPDX-License-Identifier: GPL-2.0
// vipctl's XDP fast path for `mode: steer` (backend: xdp). Built by vipctl/backends/xdpbuild.py
// with clang -target bpf; loaded and attached with bpftool (vipctl/backends/xdp.py).
//
// One packet, one decision: the program reads the active half of a double-buffered table
// ONCE (`active`), and everything it then looks at (config, bucket table, members, ports)
// is that half's. vipctl writes a whole new generation into the other half and flips
// `active` with one 4-byte map update: every packet meets exactly one generation.
//
// Per packet (steady state): the VIP compared with the live config's, bucket = low bits of the source (mask key) or
// nft's `jhash saddr mod N seed S` (hash key, include/linux/jhash.h), one array lookup,
// member's MAC into the destination, bpf_redirect_map to the member's port (devmap).
// Buckets in transition (pinning: moving, see vipctl/core/transition.py) keep their flows
// in `flows` (an LRU hash): record (UDP flows recorded, delivered to the old owner), move
// (a recorded flow to its member, a TCP SYN to the new owner and recorded, another TCP
// packet to the old owner and recorded, anything else to the new owner).
// ICMP errors about a VIP's flows (IPv4 destination unreachable, IPv6 destination
// unreachable / packet too big) pass to tc ingress, where `vipctl_icmp` copies them to
// every member that is up (XDP cannot clone a frame).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_MEMBERS 256
#define MAX_BUCKETS 65536
#define TABLE_SHIFT 16

enum phase { PHASE_NONE = 0, PHASE_STABLE = 1, PHASE_RECORD = 2, PHASE_MOVE = 3 };

struct bucket {
    __u16 owner;  // member slot (stable, record: the old owner; move: the old owner)
    __u16 next;   // move: the new owner's slot
    __u8 phase;
    __u8 pad[3];
};

struct member {
    __u32 ifindex;
    __u8 mac[6];
    __u8 alive;
    __u8 pad;
    char name[32];
};

#define MAX_VIPS 64

struct config {
    __u64 generation;
    __u64 digest;
    __u64 timeout_ns;  // a recorded flow idle this long is gone (pinning.idle_timeout_s)
    __u32 bits;
    __u32 seed;
    __u8 hash;         // 1: jhash key, 0: mask key
    __u8 measuring;    // count packets and bytes per bucket (rebalance --auto)
    __u16 members;     // slots in use
    __u16 vips4;       // VIPs in vip4[] and vip6[]
    __u16 vips6;
    __u32 vip4[MAX_VIPS];      // as in the packet (network order)
    __u64 vip6[MAX_VIPS][2];   // as in the packet, two 8-byte words
};

struct flow_key {
    __u8 saddr[16];  // IPv4: the address in the first 4 bytes, the rest zero
    __u8 daddr[16];
    __u32 ports;     // source and destination port as they sit in the packet
    __u32 family;
};

struct flow {
    __u32 slot;
    __u32 pad;
    __u64 seen;
};

struct count {
    __u64 packets;
    __u64 bytes;
};

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u32); } active SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, __u32); __type(value, struct config); } config SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2 * MAX_BUCKETS); __type(key, __u32); __type(value, struct bucket); } buckets SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2 * MAX_MEMBERS); __type(key, __u32); __type(value, struct member); } members SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_DEVMAP); __uint(max_entries, 2 * MAX_MEMBERS); __type(key, __u32); __type(value, __u32); } ports SEC(".maps");
// created by vipctl with the spec's pinning.max_flows and handed to the loader
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 65536); __type(key, struct flow_key); __type(value, struct flow); } flows SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, MAX_MEMBERS); __type(key, __u32); __type(value, struct count); } counters SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, MAX_BUCKETS); __type(key, __u32); __type(value, struct count); } load SEC(".maps");

static __always_inline __u32 rol32(__u32 x, int k) { return (x << k) | (x >> (32 - k)); }

#define JHASH_INITVAL 0xdeadbeef
#define jhash_mix(a, b, c) {                            \
    a -= c; a ^= rol32(c, 4);  c += b;                  \
    b -= a; b ^= rol32(a, 6);  a += c;                  \
    c -= b; c ^= rol32(b, 8);  b += a;                  \
    a -= c; a ^= rol32(c, 16); c += b;                  \
    b -= a; b ^= rol32(a, 19); a += c;                  \
    c -= b; c ^= rol32(b, 4);  b += a; }
#define jhash_final(a, b, c) {                          \
    c ^= b; c -= rol32(b, 14);                          \
    a ^= c; a -= rol32(c, 11);                          \
    b ^= a; b -= rol32(a, 25);                          \
    c ^= b; c -= rol32(b, 16);                          \
    a ^= c; a -= rol32(c, 4);                           \
    b ^= a; b -= rol32(a, 14);                          \
    c ^= b; c -= rol32(b, 24); }

// jhash(k, 4 or 16, seed) of include/linux/jhash.h; the words as they sit in memory (x86:
// little-endian loads, as the kernel's nft_jhash reads them)
static __always_inline __u32 jhash4(__u32 w0, __u32 seed)
{
    __u32 a, b, c;
    a = b = c = JHASH_INITVAL + 4 + seed;
    a += w0;
    jhash_final(a, b, c);
    return c;
}

static __always_inline __u32 jhash16(const __u32 *w, __u32 seed)
{
    __u32 a, b, c;
    a = b = c = JHASH_INITVAL + 16 + seed;
    a += w[0]; b += w[1]; c += w[2];
    jhash_mix(a, b, c);
    a += w[3];
    jhash_final(a, b, c);
    return c;
}

static __always_inline __u32 bucket_of(const struct config *cfg, const __u32 *saddr, int v6)
{
    __u32 n = 1u << (cfg->bits & 31);
    if (cfg->hash) {
        __u32 h = v6 ? jhash16(saddr, cfg->seed) : jhash4(saddr[0], cfg->seed);
        return (__u32)(((__u64)h * n) >> 32);
    }
    return bpf_ntohl(v6 ? saddr[3] : saddr[0]) & (n - 1);
}

// The VIPs are part of the generation (its config): every lookup a packet makes before the
// VIP check is an array lookup, which the verifier inlines, and one VIP costs one compare.
static __always_inline int is_vip4(const struct config *cfg, __u32 daddr)
{
    for (__u32 i = 0; i < MAX_VIPS; i++) {
        if (i >= cfg->vips4)
            return 0;
        if (cfg->vip4[i] == daddr)
            return 1;
    }
    return 0;
}

static __always_inline int is_vip6(const struct config *cfg, const void *daddr)
{
    __u64 hi, lo;
    __builtin_memcpy(&hi, daddr, 8);
    __builtin_memcpy(&lo, daddr + 8, 8);
    for (__u32 i = 0; i < MAX_VIPS; i++) {
        if (i >= cfg->vips6)
            return 0;
        if (cfg->vip6[i][0] == hi && cfg->vip6[i][1] == lo)
            return 1;
    }
    return 0;
}

// The live half's config; `half` is read ONCE per packet (this packet's generation).
static __always_inline struct config *live_config(__u32 *half)
{
    __u32 zero = 0;
    __u32 *act = bpf_map_lookup_elem(&active, &zero);
    if (!act)
        return 0;
    *half = *act & 1;
    return bpf_map_lookup_elem(&config, half);
}

static __always_inline void count(void *map, __u32 key, __u64 bytes)
{
    struct count *c = bpf_map_lookup_elem(map, &key);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

SEC("xdp")
int vipctl_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct config *cfg;
    void *l3;
    __u32 *saddr;
    __u32 half;
    __u8 proto;
    void *l4;
    int v6;

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return XDP_PASS;
        cfg = live_config(&half);
        if (!cfg || !is_vip4(cfg, ip->daddr))
            return XDP_PASS;
        v6 = 0;
        proto = ip->protocol;
        l4 = (void *)ip + ip->ihl * 4;
        saddr = &ip->saddr;
        l3 = ip;
        if (proto == IPPROTO_ICMP) {
            __u8 *type = l4;
            if ((void *)(type + 1) > end)
                return XDP_DROP;
            if (*type == 3)  // destination unreachable (fragmentation needed): tc copies it
                return XDP_PASS;
        }
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return XDP_PASS;
        cfg = live_config(&half);
        if (!cfg || !is_vip6(cfg, &ip6->daddr))
            return XDP_PASS;
        v6 = 1;
        proto = ip6->nexthdr;
        l4 = ip6 + 1;
        saddr = (__u32 *)&ip6->saddr;
        l3 = ip6;
        if (proto == IPPROTO_ICMPV6) {
            __u8 *type = l4;
            if ((void *)(type + 1) > end)
                return XDP_DROP;
            if (*type == 1 || *type == 2)  // destination unreachable, packet too big
                return XDP_PASS;
        }
    } else {
        return XDP_PASS;
    }

    __u32 b = bucket_of(cfg, saddr, v6) & (MAX_BUCKETS - 1);
    __u32 key = (half << TABLE_SHIFT) | b;
    struct bucket *bk = bpf_map_lookup_elem(&buckets, &key);
    if (!bk || bk->phase == PHASE_NONE)
        return XDP_DROP;  // nobody owns it: never let a VIP packet be routed
    __u32 slot = bk->owner;

    if (bk->phase != PHASE_STABLE && (proto == IPPROTO_TCP || proto == IPPROTO_UDP)) {
        __u32 *ports = l4;
        if ((void *)(ports + 1) > end)
            return XDP_DROP;
        // the flow's key, built only for a bucket in transition (steady state: no flow state)
        struct flow_key fk = {};
        if (v6) {
            struct ipv6hdr *ip6 = l3;
            __builtin_memcpy(fk.saddr, &ip6->saddr, 16);
            __builtin_memcpy(fk.daddr, &ip6->daddr, 16);
        } else {
            struct iphdr *ip = l3;
            __builtin_memcpy(fk.saddr, &ip->saddr, 4);
            __builtin_memcpy(fk.daddr, &ip->daddr, 4);
        }
        fk.ports = *ports;
        fk.family = v6 ? 6 : 4;
        __u64 now = bpf_ktime_get_ns();
        if (bk->phase == PHASE_RECORD) {
            if (proto == IPPROTO_UDP) {
                struct flow f = { .slot = slot, .seen = now };
                bpf_map_update_elem(&flows, &fk, &f, BPF_ANY);
            }
        } else {
            struct flow *f = bpf_map_lookup_elem(&flows, &fk);
            int live = 0;
            if (f && now - f->seen < cfg->timeout_ns) {
                __u32 mk = (half * MAX_MEMBERS) + (f->slot & (MAX_MEMBERS - 1));
                struct member *fm = bpf_map_lookup_elem(&members, &mk);
                if (fm && fm->alive) {
                    f->seen = now;
                    slot = f->slot;
                    live = 1;
                }
            }
            if (!live) {
                if (f)  // expired, or recorded to a member that is down: released
                    bpf_map_delete_elem(&flows, &fk);
                struct flow nf = { .seen = now };
                if (proto == IPPROTO_TCP) {
                    struct tcphdr *th = l4;
                    if ((void *)(th + 1) > end)
                        return XDP_DROP;
                    // a new connection (SYN without ACK): the new owner; any other TCP
                    // packet of an unrecorded connection: the old owner's. Both recorded.
                    slot = (th->syn && !th->ack) ? bk->next : bk->owner;
                    nf.slot = slot;
                    bpf_map_update_elem(&flows, &fk, &nf, BPF_ANY);
                } else {
                    slot = bk->next;  // an unrecorded UDP flow: the new owner
                }
            }
        }
    } else if (bk->phase == PHASE_MOVE) {
        slot = bk->next;  // not TCP/UDP: no flow to keep
    }

    __u32 mkey = (half * MAX_MEMBERS) + (slot & (MAX_MEMBERS - 1));
    struct member *m = bpf_map_lookup_elem(&members, &mkey);
    if (!m || !m->alive)
        return XDP_DROP;
    __u64 bytes = (__u64)(end - data);
    count(&counters, slot & (MAX_MEMBERS - 1), bytes);
    if (cfg->measuring)
        count(&load, b, bytes);
    __builtin_memcpy(eth->h_dest, m->mac, 6);
    return bpf_redirect_map(&ports, mkey, 0);
}

// tc ingress on the uplink: what XDP passed up that is an ICMP error to a VIP is copied to
// every member that is up (each copy with its member's MAC), and the original dropped.
SEC("tc")
int vipctl_icmp(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct config *cfg;
    __u32 half;

    if ((void *)(eth + 1) > end)
        return TC_ACT_OK;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_ICMP)
            return TC_ACT_OK;
        cfg = live_config(&half);
        if (!cfg || !is_vip4(cfg, ip->daddr))
            return TC_ACT_OK;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_ICMPV6)
            return TC_ACT_OK;
        cfg = live_config(&half);
        if (!cfg || !is_vip6(cfg, &ip6->daddr))
            return TC_ACT_OK;
    } else {
        return TC_ACT_OK;
    }
    __u32 n = cfg->members;
    for (__u32 i = 0; i < MAX_MEMBERS && i < n; i++) {
        __u32 key = half * MAX_MEMBERS + i;
        struct member *m = bpf_map_lookup_elem(&members, &key);
        if (!m || !m->alive || !m->ifindex)
            continue;
        if (bpf_skb_store_bytes(skb, 0, m->mac, 6, 0))
            return TC_ACT_SHOT;
        bpf_clone_redirect(skb, m->ifindex, 0);
    }
    return TC_ACT_SHOT;
}

// For labs and tests on veth: a veth delivers XDP_REDIRECTed frames only when its peer
// runs an XDP program (or has GRO on); this one passes everything on.
SEC("xdp")
int vipctl_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
