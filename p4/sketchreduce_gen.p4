// GENERATED FILE, DO NOT EDIT.
// Produced by `sketchreduce p4 gen --lanes 64` (crate sketchreduce-p4gen)
// from the Rust wire spec (crate sketchreduce-wire, docs/wire.md). A test fails when this
// file differs from the generator's output: change wire/ or p4gen/, then regenerate.
//
// Included at top level by sketchreduce.p4 (after core.p4 and v1model.p4).

#ifndef SKETCHREDUCE_GEN_P4
#define SKETCHREDUCE_GEN_P4

// Lanes per packet this program is compiled for; DATA with another count is bad_lanes.
#define SR_LANES 64
#define SR_POOL_SLOTS 1024
// Register entries: two sets per slot, index 2*slot + set.
#define SR_REG_SIZE 2048
#define SR_MAX_JOBS 64
#define SR_MAX_WORKERS 32
// Multicast receivers: one (egress_rid, egress_port) entry per job worker.
#define SR_MAX_RECEIVERS 2048
// Rank table: one (job, rank) entry per job worker (registered address, switch port).
#define SR_MAX_RANKS 2048

// Wire constants.
#define SR_VERSION 2
#define SR_HEADER_BYTES 32
// UDP length of a datagram with no lanes: 8 (UDP header) + the aggregation header.
#define SR_UDP_BASE_LEN 40
#define SR_DATA_PORT 0x9A00
#define SR_DATA_PORT_MASK 0xFFF0
#define SR_KIND_DATA 1
#define SR_KIND_RESULT 2
#define SR_KIND_PROBE 3
#define SR_KIND_STATUS 4
#define SR_OP_ADD 0
#define SR_OP_OR 1
#define SR_OP_MAX 2
// STATUS flags of a NACK (the answer to a PROBE of an unknown job or another epoch).
#define SR_NACK_UNKNOWN_JOB 16w1
#define SR_NACK_BAD_EPOCH 16w2

// Drop reasons: indices into the global and per-job counter arrays (DropReason).
// Counter indices are typed bit<32> literals: counter.count() takes a bit<32> index.
#define SR_DROP_MALFORMED 32w0
#define SR_DROP_UNKNOWN_JOB 32w1
#define SR_DROP_BAD_EPOCH 32w2
#define SR_DROP_BAD_RANK 32w3
#define SR_DROP_BAD_SLOT 32w4
#define SR_DROP_BAD_LANES 32w5
#define SR_DROP_BAD_KIND 32w6
#define SR_DROP_DUPLICATE 32w7
#define SR_DROP_STALE 32w8
#define SR_DROP_BAD_SOURCE 32w9
#define SR_DROP_REASONS 10

// Counter layout (see p4/README.md).
#define SR_GLOBAL_CTR_SIZE 16
#define SR_G_PACKETS_IN 32w10
#define SR_JOB_CTR_STRIDE 16
#define SR_JOB_CTR_SIZE 1024
#define SR_JC_DATA_IN 32w10
#define SR_JC_COMPLETIONS 32w11
#define SR_JC_RESULTS_UNICAST 32w12
#define SR_JC_PROBES 32w13
#define SR_TX_PACKETS_OUT 32w0

// SrLanes modes.
#define SR_LM_NONE 0
#define SR_LM_STORE 1
#define SR_LM_LOAD 2
#define SR_LM_ADD 3
#define SR_LM_OR 4
#define SR_LM_MAX 5

// The aggregation header, 32 bytes, fields in wire order.
header sr_agg_t {
    bit<8> version;
    bit<8> kind;
    bit<8> op;
    bit<8> rank;
    bit<16> job;
    bit<16> lanes;
    bit<32> epoch;
    bit<32> slot;
    bit<8> set;
    bit<8> count;
    bit<16> flags;
    bit<32> round;
    bit<32> offset;
    bit<32> bitmap;
}

// The lanes: 64 big-endian 32-bit words after the aggregation header.
header sr_lanes_t {
    bit<32> l0;
    bit<32> l1;
    bit<32> l2;
    bit<32> l3;
    bit<32> l4;
    bit<32> l5;
    bit<32> l6;
    bit<32> l7;
    bit<32> l8;
    bit<32> l9;
    bit<32> l10;
    bit<32> l11;
    bit<32> l12;
    bit<32> l13;
    bit<32> l14;
    bit<32> l15;
    bit<32> l16;
    bit<32> l17;
    bit<32> l18;
    bit<32> l19;
    bit<32> l20;
    bit<32> l21;
    bit<32> l22;
    bit<32> l23;
    bit<32> l24;
    bit<32> l25;
    bit<32> l26;
    bit<32> l27;
    bit<32> l28;
    bit<32> l29;
    bit<32> l30;
    bit<32> l31;
    bit<32> l32;
    bit<32> l33;
    bit<32> l34;
    bit<32> l35;
    bit<32> l36;
    bit<32> l37;
    bit<32> l38;
    bit<32> l39;
    bit<32> l40;
    bit<32> l41;
    bit<32> l42;
    bit<32> l43;
    bit<32> l44;
    bit<32> l45;
    bit<32> l46;
    bit<32> l47;
    bit<32> l48;
    bit<32> l49;
    bit<32> l50;
    bit<32> l51;
    bit<32> l52;
    bit<32> l53;
    bit<32> l54;
    bit<32> l55;
    bit<32> l56;
    bit<32> l57;
    bit<32> l58;
    bit<32> l59;
    bit<32> l60;
    bit<32> l61;
    bit<32> l62;
    bit<32> l63;
}

// One register array per lane (index 2*slot + set) and the unrolled lane operations.
// `lanes` is the packet's lanes header; after ADD/OR/MAX it holds the new stored values,
// so a completing packet already carries the result. Register accesses only in actions,
// conditionals only in the apply block.
control SrLanes(inout sr_lanes_t lanes, in bit<32> idx, in bit<8> mode) {
    register<bit<32>>(SR_REG_SIZE) sr_lane_0;
    register<bit<32>>(SR_REG_SIZE) sr_lane_1;
    register<bit<32>>(SR_REG_SIZE) sr_lane_2;
    register<bit<32>>(SR_REG_SIZE) sr_lane_3;
    register<bit<32>>(SR_REG_SIZE) sr_lane_4;
    register<bit<32>>(SR_REG_SIZE) sr_lane_5;
    register<bit<32>>(SR_REG_SIZE) sr_lane_6;
    register<bit<32>>(SR_REG_SIZE) sr_lane_7;
    register<bit<32>>(SR_REG_SIZE) sr_lane_8;
    register<bit<32>>(SR_REG_SIZE) sr_lane_9;
    register<bit<32>>(SR_REG_SIZE) sr_lane_10;
    register<bit<32>>(SR_REG_SIZE) sr_lane_11;
    register<bit<32>>(SR_REG_SIZE) sr_lane_12;
    register<bit<32>>(SR_REG_SIZE) sr_lane_13;
    register<bit<32>>(SR_REG_SIZE) sr_lane_14;
    register<bit<32>>(SR_REG_SIZE) sr_lane_15;
    register<bit<32>>(SR_REG_SIZE) sr_lane_16;
    register<bit<32>>(SR_REG_SIZE) sr_lane_17;
    register<bit<32>>(SR_REG_SIZE) sr_lane_18;
    register<bit<32>>(SR_REG_SIZE) sr_lane_19;
    register<bit<32>>(SR_REG_SIZE) sr_lane_20;
    register<bit<32>>(SR_REG_SIZE) sr_lane_21;
    register<bit<32>>(SR_REG_SIZE) sr_lane_22;
    register<bit<32>>(SR_REG_SIZE) sr_lane_23;
    register<bit<32>>(SR_REG_SIZE) sr_lane_24;
    register<bit<32>>(SR_REG_SIZE) sr_lane_25;
    register<bit<32>>(SR_REG_SIZE) sr_lane_26;
    register<bit<32>>(SR_REG_SIZE) sr_lane_27;
    register<bit<32>>(SR_REG_SIZE) sr_lane_28;
    register<bit<32>>(SR_REG_SIZE) sr_lane_29;
    register<bit<32>>(SR_REG_SIZE) sr_lane_30;
    register<bit<32>>(SR_REG_SIZE) sr_lane_31;
    register<bit<32>>(SR_REG_SIZE) sr_lane_32;
    register<bit<32>>(SR_REG_SIZE) sr_lane_33;
    register<bit<32>>(SR_REG_SIZE) sr_lane_34;
    register<bit<32>>(SR_REG_SIZE) sr_lane_35;
    register<bit<32>>(SR_REG_SIZE) sr_lane_36;
    register<bit<32>>(SR_REG_SIZE) sr_lane_37;
    register<bit<32>>(SR_REG_SIZE) sr_lane_38;
    register<bit<32>>(SR_REG_SIZE) sr_lane_39;
    register<bit<32>>(SR_REG_SIZE) sr_lane_40;
    register<bit<32>>(SR_REG_SIZE) sr_lane_41;
    register<bit<32>>(SR_REG_SIZE) sr_lane_42;
    register<bit<32>>(SR_REG_SIZE) sr_lane_43;
    register<bit<32>>(SR_REG_SIZE) sr_lane_44;
    register<bit<32>>(SR_REG_SIZE) sr_lane_45;
    register<bit<32>>(SR_REG_SIZE) sr_lane_46;
    register<bit<32>>(SR_REG_SIZE) sr_lane_47;
    register<bit<32>>(SR_REG_SIZE) sr_lane_48;
    register<bit<32>>(SR_REG_SIZE) sr_lane_49;
    register<bit<32>>(SR_REG_SIZE) sr_lane_50;
    register<bit<32>>(SR_REG_SIZE) sr_lane_51;
    register<bit<32>>(SR_REG_SIZE) sr_lane_52;
    register<bit<32>>(SR_REG_SIZE) sr_lane_53;
    register<bit<32>>(SR_REG_SIZE) sr_lane_54;
    register<bit<32>>(SR_REG_SIZE) sr_lane_55;
    register<bit<32>>(SR_REG_SIZE) sr_lane_56;
    register<bit<32>>(SR_REG_SIZE) sr_lane_57;
    register<bit<32>>(SR_REG_SIZE) sr_lane_58;
    register<bit<32>>(SR_REG_SIZE) sr_lane_59;
    register<bit<32>>(SR_REG_SIZE) sr_lane_60;
    register<bit<32>>(SR_REG_SIZE) sr_lane_61;
    register<bit<32>>(SR_REG_SIZE) sr_lane_62;
    register<bit<32>>(SR_REG_SIZE) sr_lane_63;

    bit<32> s0;
    bit<32> s1;
    bit<32> s2;
    bit<32> s3;
    bit<32> s4;
    bit<32> s5;
    bit<32> s6;
    bit<32> s7;
    bit<32> s8;
    bit<32> s9;
    bit<32> s10;
    bit<32> s11;
    bit<32> s12;
    bit<32> s13;
    bit<32> s14;
    bit<32> s15;
    bit<32> s16;
    bit<32> s17;
    bit<32> s18;
    bit<32> s19;
    bit<32> s20;
    bit<32> s21;
    bit<32> s22;
    bit<32> s23;
    bit<32> s24;
    bit<32> s25;
    bit<32> s26;
    bit<32> s27;
    bit<32> s28;
    bit<32> s29;
    bit<32> s30;
    bit<32> s31;
    bit<32> s32;
    bit<32> s33;
    bit<32> s34;
    bit<32> s35;
    bit<32> s36;
    bit<32> s37;
    bit<32> s38;
    bit<32> s39;
    bit<32> s40;
    bit<32> s41;
    bit<32> s42;
    bit<32> s43;
    bit<32> s44;
    bit<32> s45;
    bit<32> s46;
    bit<32> s47;
    bit<32> s48;
    bit<32> s49;
    bit<32> s50;
    bit<32> s51;
    bit<32> s52;
    bit<32> s53;
    bit<32> s54;
    bit<32> s55;
    bit<32> s56;
    bit<32> s57;
    bit<32> s58;
    bit<32> s59;
    bit<32> s60;
    bit<32> s61;
    bit<32> s62;
    bit<32> s63;

    action sr_lanes_store() {
        sr_lane_0.write(idx, lanes.l0);
        sr_lane_1.write(idx, lanes.l1);
        sr_lane_2.write(idx, lanes.l2);
        sr_lane_3.write(idx, lanes.l3);
        sr_lane_4.write(idx, lanes.l4);
        sr_lane_5.write(idx, lanes.l5);
        sr_lane_6.write(idx, lanes.l6);
        sr_lane_7.write(idx, lanes.l7);
        sr_lane_8.write(idx, lanes.l8);
        sr_lane_9.write(idx, lanes.l9);
        sr_lane_10.write(idx, lanes.l10);
        sr_lane_11.write(idx, lanes.l11);
        sr_lane_12.write(idx, lanes.l12);
        sr_lane_13.write(idx, lanes.l13);
        sr_lane_14.write(idx, lanes.l14);
        sr_lane_15.write(idx, lanes.l15);
        sr_lane_16.write(idx, lanes.l16);
        sr_lane_17.write(idx, lanes.l17);
        sr_lane_18.write(idx, lanes.l18);
        sr_lane_19.write(idx, lanes.l19);
        sr_lane_20.write(idx, lanes.l20);
        sr_lane_21.write(idx, lanes.l21);
        sr_lane_22.write(idx, lanes.l22);
        sr_lane_23.write(idx, lanes.l23);
        sr_lane_24.write(idx, lanes.l24);
        sr_lane_25.write(idx, lanes.l25);
        sr_lane_26.write(idx, lanes.l26);
        sr_lane_27.write(idx, lanes.l27);
        sr_lane_28.write(idx, lanes.l28);
        sr_lane_29.write(idx, lanes.l29);
        sr_lane_30.write(idx, lanes.l30);
        sr_lane_31.write(idx, lanes.l31);
        sr_lane_32.write(idx, lanes.l32);
        sr_lane_33.write(idx, lanes.l33);
        sr_lane_34.write(idx, lanes.l34);
        sr_lane_35.write(idx, lanes.l35);
        sr_lane_36.write(idx, lanes.l36);
        sr_lane_37.write(idx, lanes.l37);
        sr_lane_38.write(idx, lanes.l38);
        sr_lane_39.write(idx, lanes.l39);
        sr_lane_40.write(idx, lanes.l40);
        sr_lane_41.write(idx, lanes.l41);
        sr_lane_42.write(idx, lanes.l42);
        sr_lane_43.write(idx, lanes.l43);
        sr_lane_44.write(idx, lanes.l44);
        sr_lane_45.write(idx, lanes.l45);
        sr_lane_46.write(idx, lanes.l46);
        sr_lane_47.write(idx, lanes.l47);
        sr_lane_48.write(idx, lanes.l48);
        sr_lane_49.write(idx, lanes.l49);
        sr_lane_50.write(idx, lanes.l50);
        sr_lane_51.write(idx, lanes.l51);
        sr_lane_52.write(idx, lanes.l52);
        sr_lane_53.write(idx, lanes.l53);
        sr_lane_54.write(idx, lanes.l54);
        sr_lane_55.write(idx, lanes.l55);
        sr_lane_56.write(idx, lanes.l56);
        sr_lane_57.write(idx, lanes.l57);
        sr_lane_58.write(idx, lanes.l58);
        sr_lane_59.write(idx, lanes.l59);
        sr_lane_60.write(idx, lanes.l60);
        sr_lane_61.write(idx, lanes.l61);
        sr_lane_62.write(idx, lanes.l62);
        sr_lane_63.write(idx, lanes.l63);
    }

    action sr_lanes_load() {
        sr_lane_0.read(lanes.l0, idx);
        sr_lane_1.read(lanes.l1, idx);
        sr_lane_2.read(lanes.l2, idx);
        sr_lane_3.read(lanes.l3, idx);
        sr_lane_4.read(lanes.l4, idx);
        sr_lane_5.read(lanes.l5, idx);
        sr_lane_6.read(lanes.l6, idx);
        sr_lane_7.read(lanes.l7, idx);
        sr_lane_8.read(lanes.l8, idx);
        sr_lane_9.read(lanes.l9, idx);
        sr_lane_10.read(lanes.l10, idx);
        sr_lane_11.read(lanes.l11, idx);
        sr_lane_12.read(lanes.l12, idx);
        sr_lane_13.read(lanes.l13, idx);
        sr_lane_14.read(lanes.l14, idx);
        sr_lane_15.read(lanes.l15, idx);
        sr_lane_16.read(lanes.l16, idx);
        sr_lane_17.read(lanes.l17, idx);
        sr_lane_18.read(lanes.l18, idx);
        sr_lane_19.read(lanes.l19, idx);
        sr_lane_20.read(lanes.l20, idx);
        sr_lane_21.read(lanes.l21, idx);
        sr_lane_22.read(lanes.l22, idx);
        sr_lane_23.read(lanes.l23, idx);
        sr_lane_24.read(lanes.l24, idx);
        sr_lane_25.read(lanes.l25, idx);
        sr_lane_26.read(lanes.l26, idx);
        sr_lane_27.read(lanes.l27, idx);
        sr_lane_28.read(lanes.l28, idx);
        sr_lane_29.read(lanes.l29, idx);
        sr_lane_30.read(lanes.l30, idx);
        sr_lane_31.read(lanes.l31, idx);
        sr_lane_32.read(lanes.l32, idx);
        sr_lane_33.read(lanes.l33, idx);
        sr_lane_34.read(lanes.l34, idx);
        sr_lane_35.read(lanes.l35, idx);
        sr_lane_36.read(lanes.l36, idx);
        sr_lane_37.read(lanes.l37, idx);
        sr_lane_38.read(lanes.l38, idx);
        sr_lane_39.read(lanes.l39, idx);
        sr_lane_40.read(lanes.l40, idx);
        sr_lane_41.read(lanes.l41, idx);
        sr_lane_42.read(lanes.l42, idx);
        sr_lane_43.read(lanes.l43, idx);
        sr_lane_44.read(lanes.l44, idx);
        sr_lane_45.read(lanes.l45, idx);
        sr_lane_46.read(lanes.l46, idx);
        sr_lane_47.read(lanes.l47, idx);
        sr_lane_48.read(lanes.l48, idx);
        sr_lane_49.read(lanes.l49, idx);
        sr_lane_50.read(lanes.l50, idx);
        sr_lane_51.read(lanes.l51, idx);
        sr_lane_52.read(lanes.l52, idx);
        sr_lane_53.read(lanes.l53, idx);
        sr_lane_54.read(lanes.l54, idx);
        sr_lane_55.read(lanes.l55, idx);
        sr_lane_56.read(lanes.l56, idx);
        sr_lane_57.read(lanes.l57, idx);
        sr_lane_58.read(lanes.l58, idx);
        sr_lane_59.read(lanes.l59, idx);
        sr_lane_60.read(lanes.l60, idx);
        sr_lane_61.read(lanes.l61, idx);
        sr_lane_62.read(lanes.l62, idx);
        sr_lane_63.read(lanes.l63, idx);
    }

    action sr_lanes_fetch() {
        sr_lane_0.read(s0, idx);
        sr_lane_1.read(s1, idx);
        sr_lane_2.read(s2, idx);
        sr_lane_3.read(s3, idx);
        sr_lane_4.read(s4, idx);
        sr_lane_5.read(s5, idx);
        sr_lane_6.read(s6, idx);
        sr_lane_7.read(s7, idx);
        sr_lane_8.read(s8, idx);
        sr_lane_9.read(s9, idx);
        sr_lane_10.read(s10, idx);
        sr_lane_11.read(s11, idx);
        sr_lane_12.read(s12, idx);
        sr_lane_13.read(s13, idx);
        sr_lane_14.read(s14, idx);
        sr_lane_15.read(s15, idx);
        sr_lane_16.read(s16, idx);
        sr_lane_17.read(s17, idx);
        sr_lane_18.read(s18, idx);
        sr_lane_19.read(s19, idx);
        sr_lane_20.read(s20, idx);
        sr_lane_21.read(s21, idx);
        sr_lane_22.read(s22, idx);
        sr_lane_23.read(s23, idx);
        sr_lane_24.read(s24, idx);
        sr_lane_25.read(s25, idx);
        sr_lane_26.read(s26, idx);
        sr_lane_27.read(s27, idx);
        sr_lane_28.read(s28, idx);
        sr_lane_29.read(s29, idx);
        sr_lane_30.read(s30, idx);
        sr_lane_31.read(s31, idx);
        sr_lane_32.read(s32, idx);
        sr_lane_33.read(s33, idx);
        sr_lane_34.read(s34, idx);
        sr_lane_35.read(s35, idx);
        sr_lane_36.read(s36, idx);
        sr_lane_37.read(s37, idx);
        sr_lane_38.read(s38, idx);
        sr_lane_39.read(s39, idx);
        sr_lane_40.read(s40, idx);
        sr_lane_41.read(s41, idx);
        sr_lane_42.read(s42, idx);
        sr_lane_43.read(s43, idx);
        sr_lane_44.read(s44, idx);
        sr_lane_45.read(s45, idx);
        sr_lane_46.read(s46, idx);
        sr_lane_47.read(s47, idx);
        sr_lane_48.read(s48, idx);
        sr_lane_49.read(s49, idx);
        sr_lane_50.read(s50, idx);
        sr_lane_51.read(s51, idx);
        sr_lane_52.read(s52, idx);
        sr_lane_53.read(s53, idx);
        sr_lane_54.read(s54, idx);
        sr_lane_55.read(s55, idx);
        sr_lane_56.read(s56, idx);
        sr_lane_57.read(s57, idx);
        sr_lane_58.read(s58, idx);
        sr_lane_59.read(s59, idx);
        sr_lane_60.read(s60, idx);
        sr_lane_61.read(s61, idx);
        sr_lane_62.read(s62, idx);
        sr_lane_63.read(s63, idx);
    }

    action sr_lanes_add() {
        lanes.l0 = lanes.l0 + s0;
        lanes.l1 = lanes.l1 + s1;
        lanes.l2 = lanes.l2 + s2;
        lanes.l3 = lanes.l3 + s3;
        lanes.l4 = lanes.l4 + s4;
        lanes.l5 = lanes.l5 + s5;
        lanes.l6 = lanes.l6 + s6;
        lanes.l7 = lanes.l7 + s7;
        lanes.l8 = lanes.l8 + s8;
        lanes.l9 = lanes.l9 + s9;
        lanes.l10 = lanes.l10 + s10;
        lanes.l11 = lanes.l11 + s11;
        lanes.l12 = lanes.l12 + s12;
        lanes.l13 = lanes.l13 + s13;
        lanes.l14 = lanes.l14 + s14;
        lanes.l15 = lanes.l15 + s15;
        lanes.l16 = lanes.l16 + s16;
        lanes.l17 = lanes.l17 + s17;
        lanes.l18 = lanes.l18 + s18;
        lanes.l19 = lanes.l19 + s19;
        lanes.l20 = lanes.l20 + s20;
        lanes.l21 = lanes.l21 + s21;
        lanes.l22 = lanes.l22 + s22;
        lanes.l23 = lanes.l23 + s23;
        lanes.l24 = lanes.l24 + s24;
        lanes.l25 = lanes.l25 + s25;
        lanes.l26 = lanes.l26 + s26;
        lanes.l27 = lanes.l27 + s27;
        lanes.l28 = lanes.l28 + s28;
        lanes.l29 = lanes.l29 + s29;
        lanes.l30 = lanes.l30 + s30;
        lanes.l31 = lanes.l31 + s31;
        lanes.l32 = lanes.l32 + s32;
        lanes.l33 = lanes.l33 + s33;
        lanes.l34 = lanes.l34 + s34;
        lanes.l35 = lanes.l35 + s35;
        lanes.l36 = lanes.l36 + s36;
        lanes.l37 = lanes.l37 + s37;
        lanes.l38 = lanes.l38 + s38;
        lanes.l39 = lanes.l39 + s39;
        lanes.l40 = lanes.l40 + s40;
        lanes.l41 = lanes.l41 + s41;
        lanes.l42 = lanes.l42 + s42;
        lanes.l43 = lanes.l43 + s43;
        lanes.l44 = lanes.l44 + s44;
        lanes.l45 = lanes.l45 + s45;
        lanes.l46 = lanes.l46 + s46;
        lanes.l47 = lanes.l47 + s47;
        lanes.l48 = lanes.l48 + s48;
        lanes.l49 = lanes.l49 + s49;
        lanes.l50 = lanes.l50 + s50;
        lanes.l51 = lanes.l51 + s51;
        lanes.l52 = lanes.l52 + s52;
        lanes.l53 = lanes.l53 + s53;
        lanes.l54 = lanes.l54 + s54;
        lanes.l55 = lanes.l55 + s55;
        lanes.l56 = lanes.l56 + s56;
        lanes.l57 = lanes.l57 + s57;
        lanes.l58 = lanes.l58 + s58;
        lanes.l59 = lanes.l59 + s59;
        lanes.l60 = lanes.l60 + s60;
        lanes.l61 = lanes.l61 + s61;
        lanes.l62 = lanes.l62 + s62;
        lanes.l63 = lanes.l63 + s63;
    }

    action sr_lanes_or() {
        lanes.l0 = lanes.l0 | s0;
        lanes.l1 = lanes.l1 | s1;
        lanes.l2 = lanes.l2 | s2;
        lanes.l3 = lanes.l3 | s3;
        lanes.l4 = lanes.l4 | s4;
        lanes.l5 = lanes.l5 | s5;
        lanes.l6 = lanes.l6 | s6;
        lanes.l7 = lanes.l7 | s7;
        lanes.l8 = lanes.l8 | s8;
        lanes.l9 = lanes.l9 | s9;
        lanes.l10 = lanes.l10 | s10;
        lanes.l11 = lanes.l11 | s11;
        lanes.l12 = lanes.l12 | s12;
        lanes.l13 = lanes.l13 | s13;
        lanes.l14 = lanes.l14 | s14;
        lanes.l15 = lanes.l15 | s15;
        lanes.l16 = lanes.l16 | s16;
        lanes.l17 = lanes.l17 | s17;
        lanes.l18 = lanes.l18 | s18;
        lanes.l19 = lanes.l19 | s19;
        lanes.l20 = lanes.l20 | s20;
        lanes.l21 = lanes.l21 | s21;
        lanes.l22 = lanes.l22 | s22;
        lanes.l23 = lanes.l23 | s23;
        lanes.l24 = lanes.l24 | s24;
        lanes.l25 = lanes.l25 | s25;
        lanes.l26 = lanes.l26 | s26;
        lanes.l27 = lanes.l27 | s27;
        lanes.l28 = lanes.l28 | s28;
        lanes.l29 = lanes.l29 | s29;
        lanes.l30 = lanes.l30 | s30;
        lanes.l31 = lanes.l31 | s31;
        lanes.l32 = lanes.l32 | s32;
        lanes.l33 = lanes.l33 | s33;
        lanes.l34 = lanes.l34 | s34;
        lanes.l35 = lanes.l35 | s35;
        lanes.l36 = lanes.l36 | s36;
        lanes.l37 = lanes.l37 | s37;
        lanes.l38 = lanes.l38 | s38;
        lanes.l39 = lanes.l39 | s39;
        lanes.l40 = lanes.l40 | s40;
        lanes.l41 = lanes.l41 | s41;
        lanes.l42 = lanes.l42 | s42;
        lanes.l43 = lanes.l43 | s43;
        lanes.l44 = lanes.l44 | s44;
        lanes.l45 = lanes.l45 | s45;
        lanes.l46 = lanes.l46 | s46;
        lanes.l47 = lanes.l47 | s47;
        lanes.l48 = lanes.l48 | s48;
        lanes.l49 = lanes.l49 | s49;
        lanes.l50 = lanes.l50 | s50;
        lanes.l51 = lanes.l51 | s51;
        lanes.l52 = lanes.l52 | s52;
        lanes.l53 = lanes.l53 | s53;
        lanes.l54 = lanes.l54 | s54;
        lanes.l55 = lanes.l55 | s55;
        lanes.l56 = lanes.l56 | s56;
        lanes.l57 = lanes.l57 | s57;
        lanes.l58 = lanes.l58 | s58;
        lanes.l59 = lanes.l59 | s59;
        lanes.l60 = lanes.l60 | s60;
        lanes.l61 = lanes.l61 | s61;
        lanes.l62 = lanes.l62 | s62;
        lanes.l63 = lanes.l63 | s63;
    }

    apply {
        if (mode == SR_LM_STORE) {
            sr_lanes_store();
        } else if (mode == SR_LM_LOAD) {
            sr_lanes_load();
        } else if (mode == SR_LM_ADD) {
            sr_lanes_fetch();
            sr_lanes_add();
            sr_lanes_store();
        } else if (mode == SR_LM_OR) {
            sr_lanes_fetch();
            sr_lanes_or();
            sr_lanes_store();
        } else if (mode == SR_LM_MAX) {
            sr_lanes_fetch();
            if (s0 > lanes.l0) { lanes.l0 = s0; }
            if (s1 > lanes.l1) { lanes.l1 = s1; }
            if (s2 > lanes.l2) { lanes.l2 = s2; }
            if (s3 > lanes.l3) { lanes.l3 = s3; }
            if (s4 > lanes.l4) { lanes.l4 = s4; }
            if (s5 > lanes.l5) { lanes.l5 = s5; }
            if (s6 > lanes.l6) { lanes.l6 = s6; }
            if (s7 > lanes.l7) { lanes.l7 = s7; }
            if (s8 > lanes.l8) { lanes.l8 = s8; }
            if (s9 > lanes.l9) { lanes.l9 = s9; }
            if (s10 > lanes.l10) { lanes.l10 = s10; }
            if (s11 > lanes.l11) { lanes.l11 = s11; }
            if (s12 > lanes.l12) { lanes.l12 = s12; }
            if (s13 > lanes.l13) { lanes.l13 = s13; }
            if (s14 > lanes.l14) { lanes.l14 = s14; }
            if (s15 > lanes.l15) { lanes.l15 = s15; }
            if (s16 > lanes.l16) { lanes.l16 = s16; }
            if (s17 > lanes.l17) { lanes.l17 = s17; }
            if (s18 > lanes.l18) { lanes.l18 = s18; }
            if (s19 > lanes.l19) { lanes.l19 = s19; }
            if (s20 > lanes.l20) { lanes.l20 = s20; }
            if (s21 > lanes.l21) { lanes.l21 = s21; }
            if (s22 > lanes.l22) { lanes.l22 = s22; }
            if (s23 > lanes.l23) { lanes.l23 = s23; }
            if (s24 > lanes.l24) { lanes.l24 = s24; }
            if (s25 > lanes.l25) { lanes.l25 = s25; }
            if (s26 > lanes.l26) { lanes.l26 = s26; }
            if (s27 > lanes.l27) { lanes.l27 = s27; }
            if (s28 > lanes.l28) { lanes.l28 = s28; }
            if (s29 > lanes.l29) { lanes.l29 = s29; }
            if (s30 > lanes.l30) { lanes.l30 = s30; }
            if (s31 > lanes.l31) { lanes.l31 = s31; }
            if (s32 > lanes.l32) { lanes.l32 = s32; }
            if (s33 > lanes.l33) { lanes.l33 = s33; }
            if (s34 > lanes.l34) { lanes.l34 = s34; }
            if (s35 > lanes.l35) { lanes.l35 = s35; }
            if (s36 > lanes.l36) { lanes.l36 = s36; }
            if (s37 > lanes.l37) { lanes.l37 = s37; }
            if (s38 > lanes.l38) { lanes.l38 = s38; }
            if (s39 > lanes.l39) { lanes.l39 = s39; }
            if (s40 > lanes.l40) { lanes.l40 = s40; }
            if (s41 > lanes.l41) { lanes.l41 = s41; }
            if (s42 > lanes.l42) { lanes.l42 = s42; }
            if (s43 > lanes.l43) { lanes.l43 = s43; }
            if (s44 > lanes.l44) { lanes.l44 = s44; }
            if (s45 > lanes.l45) { lanes.l45 = s45; }
            if (s46 > lanes.l46) { lanes.l46 = s46; }
            if (s47 > lanes.l47) { lanes.l47 = s47; }
            if (s48 > lanes.l48) { lanes.l48 = s48; }
            if (s49 > lanes.l49) { lanes.l49 = s49; }
            if (s50 > lanes.l50) { lanes.l50 = s50; }
            if (s51 > lanes.l51) { lanes.l51 = s51; }
            if (s52 > lanes.l52) { lanes.l52 = s52; }
            if (s53 > lanes.l53) { lanes.l53 = s53; }
            if (s54 > lanes.l54) { lanes.l54 = s54; }
            if (s55 > lanes.l55) { lanes.l55 = s55; }
            if (s56 > lanes.l56) { lanes.l56 = s56; }
            if (s57 > lanes.l57) { lanes.l57 = s57; }
            if (s58 > lanes.l58) { lanes.l58 = s58; }
            if (s59 > lanes.l59) { lanes.l59 = s59; }
            if (s60 > lanes.l60) { lanes.l60 = s60; }
            if (s61 > lanes.l61) { lanes.l61 = s61; }
            if (s62 > lanes.l62) { lanes.l62 = s62; }
            if (s63 > lanes.l63) { lanes.l63 = s63; }
            sr_lanes_store();
        }
    }
}

#endif  // SKETCHREDUCE_GEN_P4
