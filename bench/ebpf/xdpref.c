// Hand-written references for bench/routercost.py (not product code), built per lab with
// -DVIP=<address as a big-endian constant>:
// - ref_steer: the minimal XDP steer the issue measured: bucket = low byte of the source,
//   an array map of 256 buckets -> { port ifindex, member MAC }, MAC rewrite, bpf_redirect.
// - ref_drop: drops every VIP packet at the first hook there is (the generator's ceiling).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct port { __u32 ifindex; __u8 mac[6]; __u16 pad; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 256); __type(key, __u32); __type(value, struct port); } table SEC(".maps");

SEC("xdp")
int ref_steer(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->daddr != VIP)
        return XDP_PASS;
    __u32 b = bpf_ntohl(ip->saddr) & 255;
    struct port *p = bpf_map_lookup_elem(&table, &b);
    if (!p)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, p->mac, 6);
    return bpf_redirect(p->ifindex, 0);
}

SEC("xdp")
int ref_drop(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->daddr != VIP)
        return XDP_PASS;
    return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
