/* -*- P4_16 -*- */
/*
 * sketchreduce: in-network aggregation switch for bmv2 simple_switch (v1model).
 *
 * The semantics are those of docs/wire.md, implemented identically by the software switch in
 * switch-emu/. The header types, constants and the unrolled per-lane register operations are
 * generated from the Rust wire spec into sketchreduce_gen.p4 (`sketchreduce p4 gen`); this file
 * holds the control flow. The control plane comes from `sketchreduce p4 config --jobs FILE`.
 *
 * Compile:  p4c --target bmv2 --arch v1model -o build p4/sketchreduce.p4
 * Every assumption about bmv2 behaviour is listed in p4/README.md.
 */

#include <core.p4>
#include <v1model.p4>

#include "sketchreduce_gen.p4"

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<8>  IPPROTO_UDP    = 17;

/*************************************************************************
 * Headers and metadata
 *************************************************************************/

header ethernet_t {
    bit<48> dst_addr;
    bit<48> src_addr;
    bit<16> ether_type;
}

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<8>  diffserv;
    bit<16> total_len;
    bit<16> identification;
    bit<3>  flags;
    bit<13> frag_offset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdr_checksum;
    bit<32> src_addr;
    bit<32> dst_addr;
}

// IPv4 options (IHL 6..15): skipped so that the UDP ports behind them can be read; a
// sketchreduce datagram with options is malformed (docs/wire.md).
header ipv4_options_t {
    varbit<320> options;
}

header udp_t {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> len;
    bit<16> checksum;
}

struct headers_t {
    ethernet_t     ethernet;
    ipv4_t         ipv4;
    ipv4_options_t ipv4_options;
    udp_t          udp;
    sr_agg_t       agg;    // generated: the 32-byte aggregation header
    sr_lanes_t     lanes;  // generated: SR_LANES x bit<32>
}

struct sr_meta_t {
    bit<1>  data_port;   // UDP destination port in the data range: a sketchreduce datagram
    bit<1>  ip_options;  // ... whose IPv4 header has options (IHL > 5): malformed
    bit<1>  has_job;     // the job table matched (drops are then counted per job)
    bit<1>  drop;
    bit<1>  update;      // write round/bitmap/count of the slot set
    bit<1>  unicast;     // unicast the stored RESULT back to the sender
    bit<1>  mcast;       // RESULT multicast to the job's workers (egress rewrites each replica)
    bit<1>  reply;       // a datagram the switch sends (counted in egress; IPv4 checksum redone)
    bit<16> nack;        // STATUS flags of a NACK answering a PROBE (0: no NACK)
    bit<8>  lanes_mode;  // SrLanes mode, SR_LM_*
    bit<32> reason;      // drop reason, SR_DROP_*
    bit<32> want_len;    // UDP length the header announces
    // From the job table.
    bit<32> epoch;
    bit<8>  workers;
    bit<16> lanes;
    bit<32> slot_base;
    bit<32> slot_count;
    bit<16> mcast_grp;
    bit<32> job_index;
    bit<32> job_ctr;     // job_index * SR_JOB_CTR_STRIDE
    // From the rank table: the rank's registered address and switch port.
    bit<48> r_mac;
    bit<32> r_ip;
    bit<16> r_udp;
    bit<9>  r_port;
    // Slot state.
    bit<32> slot_off;    // slot - slot_base (wrapping)
    bit<32> idx;         // register index, 2 * slot + set
    bit<32> rank_bit;    // 1 << rank
    bit<32> s_round;     // stored round, bitmap, count of the set
    bit<32> s_bitmap;
    bit<8>  s_count;
    bit<32> diff;        // packet round - stored round (serial-number comparison)
    bit<32> n_bitmap;    // new bitmap and count after this packet
    bit<8>  n_count;
}

/*************************************************************************
 * Parser: Ethernet -> IPv4 (fragment offset 0, UDP) [-> options] -> UDP (data port range)
 *         -> aggregation header -> lanes (DATA/RESULT with SR_LANES lanes only)
 *************************************************************************/

parser SrParser(packet_in packet,
                out headers_t hdr,
                inout sr_meta_t meta,
                inout standard_metadata_t standard_metadata) {
    state start {
        meta.data_port = 1w0;
        meta.ip_options = 1w0;
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }

    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        // Fragment offset 0 (not fragmented, or a first fragment, whose UDP header is
        // readable: ingress drops it as malformed) and UDP. Later fragments carry no UDP
        // header and are other traffic.
        transition select(hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (13w0, IPPROTO_UDP): parse_ipv4_ihl;
            default: accept;
        }
    }

    state parse_ipv4_ihl {
        // IHL 5: no options. IHL < 5 is not IPv4 a host would send: not ours.
        transition select(hdr.ipv4.ihl) {
            4w5: parse_udp;
            4w0: accept;
            4w1: accept;
            4w2: accept;
            4w3: accept;
            4w4: accept;
            default: parse_ipv4_options;
        }
    }

    state parse_ipv4_options {
        // (IHL - 5) 32-bit words of options.
        packet.extract(hdr.ipv4_options, ((bit<32>)hdr.ipv4.ihl << 5) - 32w160);
        transition parse_udp_after_options;
    }

    state parse_udp_after_options {
        packet.extract(hdr.udp);
        transition select(hdr.udp.dst_port) {
            SR_DATA_PORT &&& SR_DATA_PORT_MASK: data_port_with_options;
            default: accept;
        }
    }

    state data_port_with_options {
        // Counted as a sketchreduce datagram and dropped as malformed; the aggregation
        // header is not parsed.
        meta.data_port = 1w1;
        meta.ip_options = 1w1;
        transition accept;
    }

    state parse_udp {
        packet.extract(hdr.udp);
        transition select(hdr.udp.dst_port) {
            SR_DATA_PORT &&& SR_DATA_PORT_MASK: parse_agg;
            default: accept;
        }
    }

    state parse_agg {
        meta.data_port = 1w1;
        // A datagram shorter than the header fails here (PacketTooShort); v1model/bmv2 then
        // continues into ingress with hdr.agg invalid, which ingress drops as malformed.
        packet.extract(hdr.agg);
        transition select(hdr.agg.kind, hdr.agg.lanes) {
            (SR_KIND_DATA, SR_LANES): parse_lanes;
            (SR_KIND_RESULT, SR_LANES): parse_lanes;
            default: accept;
        }
    }

    state parse_lanes {
        packet.extract(hdr.lanes);
        transition accept;
    }
}

/*************************************************************************
 * Checksum verification: none (see README: the IPv4 checksum is not verified)
 *************************************************************************/

control SrVerifyChecksum(inout headers_t hdr, inout sr_meta_t meta) {
    apply { }
}

/*************************************************************************
 * Ingress: validation, job and rank lookup, the slot state machine of docs/wire.md
 *************************************************************************/

control SrIngress(inout headers_t hdr,
                  inout sr_meta_t meta,
                  inout standard_metadata_t standard_metadata) {

    // Slot set state, index 2 * slot + set. The lanes live in SrLanes (generated).
    register<bit<32>>(SR_REG_SIZE) sr_round;
    register<bit<32>>(SR_REG_SIZE) sr_bitmap;
    register<bit<8>>(SR_REG_SIZE) sr_count;

    // [0, SR_DROP_REASONS): drops with no job (malformed, unknown_job); SR_G_PACKETS_IN.
    counter(SR_GLOBAL_CTR_SIZE, CounterType.packets) sr_global;
    // job_index * SR_JOB_CTR_STRIDE + k: k < SR_DROP_REASONS drops by reason, then
    // SR_JC_DATA_IN, SR_JC_COMPLETIONS, SR_JC_RESULTS_UNICAST, SR_JC_PROBES.
    counter(SR_JOB_CTR_SIZE, CounterType.packets) sr_job;

    SrLanes() sr_lanes_unit;

    action sr_drop(in bit<32> reason) {
        meta.drop = 1w1;
        meta.reason = reason;
    }

    action sr_set_job(bit<32> epoch, bit<8> workers, bit<16> lanes, bit<32> slot_base,
                      bit<32> slot_count, bit<16> mcast_grp, bit<32> job_index) {
        meta.has_job = 1w1;
        meta.epoch = epoch;
        meta.workers = workers;
        meta.lanes = lanes;
        meta.slot_base = slot_base;
        meta.slot_count = slot_count;
        meta.mcast_grp = mcast_grp;
        meta.job_index = job_index;
        meta.job_ctr = job_index << 4;  // SR_JOB_CTR_STRIDE = 16
    }

    action sr_no_job() {
        meta.has_job = 1w0;
    }

    table sr_jobs {
        key = {
            hdr.agg.job: exact;
        }
        actions = {
            sr_set_job;
            sr_no_job;
        }
        default_action = sr_no_job();
        size = SR_MAX_JOBS;
    }

    // The registered address of every rank of every job: its packets must come from there
    // (bad_source otherwise), and STATUS and unicast RESULTs go there.
    action sr_set_rank(bit<48> mac, bit<32> ip, bit<16> udp_port, bit<9> port) {
        meta.r_mac = mac;
        meta.r_ip = ip;
        meta.r_udp = udp_port;
        meta.r_port = port;
    }

    action sr_no_rank() {
        meta.r_ip = 32w0;
    }

    table sr_ranks {
        key = {
            hdr.agg.job: exact;
            hdr.agg.rank: exact;
        }
        actions = {
            sr_set_rank;
            sr_no_rank;
        }
        default_action = sr_no_rank();
        size = SR_MAX_RANKS;
    }

    // Non-sketchreduce traffic: L2 forwarding by destination MAC; anything else is dropped.
    action sr_l2_forward(bit<9> port) {
        standard_metadata.egress_spec = port;
    }

    action sr_l2_drop() {
        mark_to_drop(standard_metadata);
    }

    table sr_l2 {
        key = {
            hdr.ethernet.dst_addr: exact;
        }
        actions = {
            sr_l2_forward;
            sr_l2_drop;
        }
        default_action = sr_l2_drop();
        size = 1024;
    }

    action sr_read_state() {
        sr_round.read(meta.s_round, meta.idx);
        sr_bitmap.read(meta.s_bitmap, meta.idx);
        sr_count.read(meta.s_count, meta.idx);
    }

    action sr_write_state() {
        sr_round.write(meta.idx, hdr.agg.round);
        sr_bitmap.write(meta.idx, meta.n_bitmap);
        sr_count.write(meta.idx, meta.n_count);
    }

    // Turn the request around: reply from the address and port it was sent to, towards the
    // sender, out of the port it came in on (egress rewrites the destination of multicast
    // replicas; sr_to_rank that of STATUS and unicast RESULTs).
    action sr_turn_around() {
        bit<48> mac = hdr.ethernet.dst_addr;
        hdr.ethernet.dst_addr = hdr.ethernet.src_addr;
        hdr.ethernet.src_addr = mac;
        bit<32> ip = hdr.ipv4.dst_addr;
        hdr.ipv4.dst_addr = hdr.ipv4.src_addr;
        hdr.ipv4.src_addr = ip;
        hdr.ipv4.ttl = 8w64;
        bit<16> port = hdr.udp.dst_port;
        hdr.udp.dst_port = hdr.udp.src_port;
        hdr.udp.src_port = port;
        hdr.udp.checksum = 16w0;
        hdr.agg.flags = 16w0;
        standard_metadata.egress_spec = standard_metadata.ingress_port;
        meta.reply = 1w1;
    }

    // Address a reply to the rank's registered address (equal to the source after the
    // source check; the ingress port is the registered port).
    action sr_to_rank() {
        hdr.ethernet.dst_addr = meta.r_mac;
        hdr.ipv4.dst_addr = meta.r_ip;
        hdr.udp.dst_port = meta.r_udp;
    }

    action sr_status_reply() {
        hdr.agg.kind = SR_KIND_STATUS;
        hdr.agg.round = meta.s_round;
        hdr.agg.count = meta.s_count;
        hdr.agg.bitmap = meta.s_bitmap;
    }

    // A PROBE for a job that is not registered (or not with this epoch): the probe's header
    // with kind STATUS, count, bitmap, round 0 and a NACK flag, back to the sender.
    action sr_nack_reply() {
        hdr.agg.kind = SR_KIND_STATUS;
        hdr.agg.round = 32w0;
        hdr.agg.count = 8w0;
        hdr.agg.bitmap = 32w0;
        hdr.agg.lanes = 16w0;
    }

    action sr_result_unicast() {
        hdr.agg.kind = SR_KIND_RESULT;
        hdr.agg.count = meta.s_count;
        hdr.agg.bitmap = meta.s_bitmap;
    }

    action sr_result_multicast() {
        hdr.agg.kind = SR_KIND_RESULT;
        hdr.agg.count = meta.n_count;
        hdr.agg.bitmap = meta.n_bitmap;
        standard_metadata.mcast_grp = meta.mcast_grp;
        meta.mcast = 1w1;
    }

    apply {
        meta.has_job = 1w0;
        meta.drop = 1w0;
        meta.update = 1w0;
        meta.unicast = 1w0;
        meta.mcast = 1w0;
        meta.reply = 1w0;
        meta.nack = 16w0;
        meta.lanes_mode = SR_LM_NONE;
        meta.reason = 32w0;

        if (meta.data_port == 1w0) {
            // Not sketchreduce (ARP, other IP, other UDP ports): L2 forwarding or drop.
            sr_l2.apply();
        } else {
            sr_global.count(SR_G_PACKETS_IN);

            // 1. Malformed (docs/wire.md): IPv4 options, truncated, bad version/kind/op/set,
            //    length not exactly 32 + 4*L, lanes on PROBE/STATUS or none on DATA/RESULT,
            //    and for requests (DATA, PROBE) flags != 0 or set != round & 1. Also the first
            //    fragment of a datagram larger than a frame (MF set): the switch cannot
            //    reassemble it.
            if (meta.ip_options == 1w1) {
                sr_drop(SR_DROP_MALFORMED);
            } else if ((hdr.ipv4.flags & 3w1) != 3w0) {
                sr_drop(SR_DROP_MALFORMED);
            } else if (!hdr.agg.isValid()) {
                sr_drop(SR_DROP_MALFORMED);
            } else {
                meta.want_len = ((bit<32>)hdr.agg.lanes << 2) + SR_UDP_BASE_LEN;
                if (hdr.agg.version != SR_VERSION) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if (hdr.agg.kind < SR_KIND_DATA || hdr.agg.kind > SR_KIND_STATUS) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if (hdr.agg.op > SR_OP_MAX) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if (hdr.agg.set > 8w1) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if ((bit<32>)hdr.udp.len != meta.want_len) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if ((hdr.agg.kind == SR_KIND_DATA || hdr.agg.kind == SR_KIND_RESULT)
                           && hdr.agg.lanes == 16w0) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if ((hdr.agg.kind == SR_KIND_PROBE || hdr.agg.kind == SR_KIND_STATUS)
                           && hdr.agg.lanes != 16w0) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if (hdr.agg.lanes == SR_LANES && !hdr.lanes.isValid()) {
                    // The UDP length announces the lanes but the frame is shorter.
                    sr_drop(SR_DROP_MALFORMED);
                } else if ((hdr.agg.kind == SR_KIND_DATA || hdr.agg.kind == SR_KIND_PROBE)
                           && hdr.agg.flags != 16w0) {
                    sr_drop(SR_DROP_MALFORMED);
                } else if ((hdr.agg.kind == SR_KIND_DATA || hdr.agg.kind == SR_KIND_PROBE)
                           && (bit<32>)hdr.agg.set != (hdr.agg.round & 32w1)) {
                    sr_drop(SR_DROP_MALFORMED);
                }
            }

            // 2. Job and rank checks, in the order of docs/wire.md.
            if (meta.drop == 1w0) {
                if (!sr_jobs.apply().hit) {
                    sr_drop(SR_DROP_UNKNOWN_JOB);
                    if (hdr.agg.kind == SR_KIND_PROBE) {
                        meta.nack = SR_NACK_UNKNOWN_JOB;
                    }
                } else {
                    meta.slot_off = hdr.agg.slot - meta.slot_base;
                    if (hdr.agg.epoch != meta.epoch) {
                        sr_drop(SR_DROP_BAD_EPOCH);
                        if (hdr.agg.kind == SR_KIND_PROBE) {
                            meta.nack = SR_NACK_BAD_EPOCH;
                        }
                    } else if (hdr.agg.rank >= meta.workers) {
                        sr_drop(SR_DROP_BAD_RANK);
                    } else if (!sr_ranks.apply().hit) {
                        // Every rank of a job has an entry; a miss is a half-configured job.
                        sr_drop(SR_DROP_BAD_SOURCE);
                    } else if (hdr.ipv4.src_addr != meta.r_ip
                               || hdr.udp.src_port != meta.r_udp
                               || standard_metadata.ingress_port != meta.r_port) {
                        sr_drop(SR_DROP_BAD_SOURCE);
                    } else if (meta.slot_off >= meta.slot_count) {
                        sr_drop(SR_DROP_BAD_SLOT);
                    } else if (hdr.agg.kind == SR_KIND_RESULT || hdr.agg.kind == SR_KIND_STATUS) {
                        sr_drop(SR_DROP_BAD_KIND);
                    } else if (hdr.agg.kind == SR_KIND_DATA
                               && (hdr.agg.lanes != meta.lanes || hdr.agg.lanes != SR_LANES)) {
                        // Also any lane count other than the one this program is compiled for.
                        sr_drop(SR_DROP_BAD_LANES);
                    }
                }
            }

            if (meta.drop == 1w0) {
                meta.idx = (hdr.agg.slot << 1) | (bit<32>)hdr.agg.set;
                sr_read_state();

                if (hdr.agg.kind == SR_KIND_PROBE) {
                    // 3. PROBE -> STATUS to the rank's registered address; nothing changes.
                    sr_status_reply();
                    sr_turn_around();
                    sr_to_rank();
                    sr_job.count(meta.job_ctr + SR_JC_PROBES);
                } else {
                    // 4. DATA.
                    meta.rank_bit = 32w1 << hdr.agg.rank;
                    meta.diff = hdr.agg.round - meta.s_round;
                    if (meta.diff != 32w0 && (meta.diff & 32w0x80000000) != 32w0) {
                        // Older round: a delayed packet of a finished round.
                        sr_drop(SR_DROP_STALE);
                    } else if (meta.diff != 32w0) {
                        // Newer round: the set starts it with this contribution.
                        meta.lanes_mode = SR_LM_STORE;
                        meta.n_bitmap = meta.rank_bit;
                        meta.n_count = 8w1;
                        meta.update = 1w1;
                    } else if ((meta.s_bitmap & meta.rank_bit) != 32w0) {
                        if (meta.s_count == meta.workers) {
                            // Complete, and this worker retransmits: its RESULT was lost.
                            meta.lanes_mode = SR_LM_LOAD;
                            meta.unicast = 1w1;
                        } else {
                            sr_drop(SR_DROP_DUPLICATE);
                        }
                    } else if (meta.s_count >= meta.workers) {
                        // Complete without this rank: cannot happen for a correct worker.
                        sr_drop(SR_DROP_STALE);
                    } else if (meta.s_count == 8w0) {
                        // First contribution (round 0 on fresh registers): lanes, bitmap and
                        // count are this packet's alone.
                        meta.lanes_mode = SR_LM_STORE;
                        meta.n_bitmap = meta.rank_bit;
                        meta.n_count = 8w1;
                        meta.update = 1w1;
                    } else {
                        if (hdr.agg.op == SR_OP_ADD) {
                            meta.lanes_mode = SR_LM_ADD;
                        } else if (hdr.agg.op == SR_OP_OR) {
                            meta.lanes_mode = SR_LM_OR;
                        } else {
                            meta.lanes_mode = SR_LM_MAX;
                        }
                        meta.n_bitmap = meta.s_bitmap | meta.rank_bit;
                        meta.n_count = meta.s_count + 8w1;
                        meta.update = 1w1;
                    }

                    // Lanes: store / load / combine. Afterwards hdr.lanes holds the stored
                    // values, so a completing packet already carries the result.
                    if (meta.lanes_mode != SR_LM_NONE) {
                        sr_lanes_unit.apply(hdr.lanes, meta.idx, meta.lanes_mode);
                    }

                    if (meta.update == 1w1) {
                        sr_write_state();
                        sr_job.count(meta.job_ctr + SR_JC_DATA_IN);
                        if (meta.n_count == meta.workers) {
                            // Complete: RESULT to every worker of the job.
                            sr_result_multicast();
                            sr_turn_around();
                            sr_job.count(meta.job_ctr + SR_JC_COMPLETIONS);
                        } else {
                            // Absorbed: nothing to send.
                            mark_to_drop(standard_metadata);
                        }
                    } else if (meta.unicast == 1w1) {
                        sr_result_unicast();
                        sr_turn_around();
                        sr_to_rank();
                        sr_job.count(meta.job_ctr + SR_JC_RESULTS_UNICAST);
                    }
                }
            }

            if (meta.drop == 1w1) {
                if (meta.nack != 16w0) {
                    // Still counted as a drop below; the NACK itself counts as sent.
                    sr_nack_reply();
                    sr_turn_around();
                    hdr.agg.flags = meta.nack;
                } else {
                    mark_to_drop(standard_metadata);
                }
                if (meta.has_job == 1w1) {
                    sr_job.count(meta.job_ctr + meta.reason);
                } else {
                    sr_global.count(meta.reason);
                }
            }
        }
    }
}

/*************************************************************************
 * Egress: per-replica destination rewrite for multicast RESULTs; tx counters
 *************************************************************************/

control SrEgress(inout headers_t hdr,
                 inout sr_meta_t meta,
                 inout standard_metadata_t standard_metadata) {

    // Index SR_TX_PACKETS_OUT (0): every sketchreduce datagram sent.
    counter(1, CounterType.packets) sr_tx;
    // Index job_index: RESULT replicas sent by multicast for that job.
    counter(SR_MAX_JOBS, CounterType.packets) sr_tx_mcast;

    action sr_set_dst(bit<48> mac, bit<32> ip, bit<16> udp_port) {
        hdr.ethernet.dst_addr = mac;
        hdr.ipv4.dst_addr = ip;
        hdr.udp.dst_port = udp_port;
    }

    action sr_no_dst() {
        mark_to_drop(standard_metadata);
    }

    // One entry per (job, worker): replication id and port of its multicast node.
    table sr_mcast_dst {
        key = {
            standard_metadata.egress_rid: exact;
            standard_metadata.egress_port: exact;
        }
        actions = {
            sr_set_dst;
            sr_no_dst;
        }
        default_action = sr_no_dst();
        size = SR_MAX_RECEIVERS;
    }

    apply {
        if (meta.mcast == 1w1) {
            if (sr_mcast_dst.apply().hit) {
                sr_tx.count(SR_TX_PACKETS_OUT);
                sr_tx_mcast.count(meta.job_index);
            }
        } else if (meta.reply == 1w1) {
            sr_tx.count(SR_TX_PACKETS_OUT);
        }
    }
}

/*************************************************************************
 * Checksum computation: the IPv4 header checksum of the datagrams the switch sends (the UDP
 * checksum of replies is 0). Forwarded packets are left as they are: their checksum is
 * right already, and one with options would get a wrong one from this field list.
 *************************************************************************/

control SrComputeChecksum(inout headers_t hdr, inout sr_meta_t meta) {
    apply {
        update_checksum(
            meta.reply == 1w1,
            { hdr.ipv4.version,
              hdr.ipv4.ihl,
              hdr.ipv4.diffserv,
              hdr.ipv4.total_len,
              hdr.ipv4.identification,
              hdr.ipv4.flags,
              hdr.ipv4.frag_offset,
              hdr.ipv4.ttl,
              hdr.ipv4.protocol,
              hdr.ipv4.src_addr,
              hdr.ipv4.dst_addr },
            hdr.ipv4.hdr_checksum,
            HashAlgorithm.csum16);
    }
}

/*************************************************************************
 * Deparser
 *************************************************************************/

control SrDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.ipv4_options);
        packet.emit(hdr.udp);
        packet.emit(hdr.agg);
        packet.emit(hdr.lanes);
    }
}

V1Switch(
    SrParser(),
    SrVerifyChecksum(),
    SrIngress(),
    SrEgress(),
    SrComputeChecksum(),
    SrDeparser()
) main;
