// Spike, not product code: steer at tc ingress with an LRU pin map, to measure what flow
// pinning costs in eBPF on the same bench as vipctl's nftables data plane (bench/ebpfspike.py).
// Built per lab by the runner: MEMBER_INIT (4 x { ifindex, MAC, alive }), VIP, PIN_MAX;
// -DNOPIN: stateless steer; -DNOTS: no last-seen timestamp write on pinned packets.
// The bucket is the low 8 bits of the source, 64 buckets per member (as the bench's table).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct member { __u32 ifindex; __u8 mac[6]; __u8 alive; __u8 pad; };
struct flow { __u32 saddr, daddr, ports; };
struct pin { __u32 member; __u32 pad; __u64 seen; };

struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, PIN_MAX); __type(key, struct flow); __type(value, struct pin); } pins SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } counts SEC(".maps");

static const struct member MEMBERS[4] = { MEMBER_INIT };

SEC("tc")
int steer(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    if (data + 14 + 20 + 4 > end) {
        if (bpf_skb_pull_data(skb, 14 + 20 + 4))
            return TC_ACT_OK;
        data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
        if (data + 14 + 20 + 4 > end)
            return TC_ACT_OK;
    }
    struct ethhdr *eth = data;
    if (eth->h_proto != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    struct iphdr *ip = data + 14;
    if (ip->daddr != VIP || ip->ihl != 5)
        return TC_ACT_OK;
    __u32 idx;
    struct flow f = { ip->saddr, ip->daddr, 0 };
    int l4 = ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP;
    if (l4) {
        f.ports = *(__u32 *)(ip + 1);
#ifndef NOPIN
        struct pin *p = bpf_map_lookup_elem(&pins, &f);
        if (p && p->member < 4 && MEMBERS[p->member & 3].alive) {
#ifndef NOTS
            p->seen = bpf_ktime_get_ns();
#endif
            idx = p->member;
            goto deliver;
        }
#endif
    }
    idx = (bpf_ntohl(ip->saddr) & 255) * 4 / 256;
#ifndef NOPIN
    if (l4) {
        struct pin np = { idx, 0, bpf_ktime_get_ns() };
        bpf_map_update_elem(&pins, &f, &np, BPF_ANY);
    }
#endif
deliver:
    if (idx >= 4)
        return TC_ACT_SHOT;
    __u64 *c = bpf_map_lookup_elem(&counts, &idx);
    if (c)
        *c += 1;
    idx &= 3;
    const struct member *mm = &MEMBERS[idx];
    bpf_skb_store_bytes(skb, 0, mm->mac, 6, 0);
    return bpf_redirect(mm->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
