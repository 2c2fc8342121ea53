// The patch kernel: the fused conv2d -> +bias -> relu -> +other on Hopper (sm_90a) for NCHW
// and channels-last input, where the implicit GEMM's A operand is built in registers from
// an input patch in shared memory instead of being gathered element by element (PLANES:
// read by wgmma from the patch itself).
//
// A persistent CTA walks tiles of kPatchBM output pixels (tile_h rows of tile_w pixels) x
// BN output channels (128, or 64 for layers of at most 64: no half-empty tiles). K is
// ordered (channel block, kh, kw, channel) with blocks of CB channels (one 128-byte K
// slice: 32 fp32 or 64 16-bit), so a slice is one tap of one channel block, and a unit
// (one channel block of one tile) is `taps` slices. The CTA's three warpgroups have one
// job each:
//   - the producer (warpgroup 0, few registers): its first thread copies each weight slice
//     into a ring slot with one bulk copy (the prepared weights are laid out slice by
//     slice, already swizzled); its warps 1-3 copy each unit's input patch --
//     patch_rows rows x patch_pitch columns x CB channels, padding zero-filled; channel
//     planes (NCHW) or pixels of CB channels (channels-last) -- into a patch slot as soon
//     as the slot is free (NCHW: one bulk copy per channel row, or where rows are staged
//     and the patch lands as dense rows one tensor copy of the whole patch; channels-last:
//     one tensor copy of the whole patch in fp32, 16-byte cp.async in 16-bit), round a
//     landed TF32 patch in place once (a 16-bit NCHW one: interleave its channel pairs; a
//     3xTF32 one stays as it is; PLANES: transpose a TF32 NCHW one into planes of 4
//     channels), and publish it;
//   - two consumers (warpgroups 1 and 2, 128 tile rows each) multiply: per slice two
//     m64nBN wgmmas per k-step (A from registers, B from the ring slot), and while they
//     run, build the next slice's A fragments from the patch (one ld.shared per register
//     at the tap's offset; PLANES: A read by the wgmmas from the patch, at the tap's
//     offset); 3xTF32 splits each k-step's fragments into TF32 parts for three wgmmas
//     per m-half against the slice's two or three weight sets (each set one ring slot).
//     After a tile's last slice each consumer runs its epilogue (bias, relu, other, one
//     store) from its accumulators: NCHW output straight to memory,
//     channels-last output staged in the patch slot the tile has finished with and written
//     by the copy engine while the next tile runs; so is NCHW output in the ROWS kernel,
//     for tiles of whole output rows (stage_row_bytes): all of a 16-bit tile, the first
//     72 channels of a TF32 one. The 16-bit tile's last kPatchExtChannels channels are
//     staged in a buffer of their own instead (the ext stage) and written out by the
//     consumers themselves, so that the patch warps' write-out, which the slot's next
//     patch waits for, is shorter.
// The warpgroups meet only at mbarriers: a slot is "full" once its copy landed and
// "empty" once every consumer thread is past it, so one consumer's epilogue can run beside
// the other's wgmmas, and the copies beside both.
#pragma once

#include <cuda.h>

#include "conv_relu_add.cuh"

namespace fx_fuse {

constexpr int kPatchProducerThreads = 128;
constexpr int kPatchConsumerThreads = 256;
constexpr int kPatchThreads = kPatchProducerThreads + kPatchConsumerThreads;
constexpr int kPatchCopyThreads = kPatchProducerThreads - 32;  // the producer's patch warps
constexpr int kPatchBStages = 4;    // weight ring slots
constexpr int kPatchSlots = 2;      // input patch buffers (one in use, one loading)
// 16-bit staged rows: a tile's last kPatchExtChannels channels are staged in a buffer of
// their own (the "ext" stage) instead of the patch slot, and the consumers write them out
// themselves, so that the slot's write-out, which the next patch's copy waits for, is that
// many copies shorter (v61: 32 or 48, with a weight ring of three slots to make room, were
// slower than 16).
constexpr int kPatchExtChannels = 16;
template <Math MATH, bool ROWS> constexpr bool patch_ext_stage() {
  return ROWS && sizeof(typename MathTraits<MATH>::T) == 2;
}
// A weight slice: BN output channels x one 128-byte K slice.
template <int BN> constexpr int kPatchSliceBytes = BN * kSliceBytes;
// Registers per thread after setmaxnreg: the 384 x 168 a thread gets at launch, moved
// from the producer to the consumers (the CTA can only share what it holds):
// 128 x (168 - 40) = 256 x (232 - 168). PLANES: the consumers hold no A fragments and
// the producer's patch warps hold a plane group of the transpose (transpose_planes).
template <bool PLANES> constexpr int kPatchProducerRegs = PLANES ? 88 : 40;
template <bool PLANES> constexpr int kPatchConsumerRegs = PLANES ? 208 : 232;
constexpr int kPatchLaunchRegs = 65536 / kPatchThreads / 8 * 8;
template <bool PLANES>
constexpr bool patch_regs_balance() {
  return kPatchProducerThreads * (kPatchLaunchRegs - kPatchProducerRegs<PLANES>) >=
         kPatchConsumerThreads * (kPatchConsumerRegs<PLANES> - kPatchLaunchRegs);
}
static_assert(patch_regs_balance<false>() && patch_regs_balance<true>(),
              "the consumers' registers must come from the producer's");

// PLANES: the most bytes one plane of a patch takes (4 TF32 channels, 16 bytes a position,
// 16 chan_step bytes apart: at most kPatchChannelPitch positions).
constexpr uint32_t kPatchPlaneBytes = 16 * kPatchChannelPitch;
static_assert(8 * kPatchPlaneBytes <= kPatchSlotBytes, "a channel block's planes fit a patch slot");

// The mbarriers, by index: weight slot full / empty, patch slot landed (the copies are
// done) / full (rounded, ready) / empty.
enum PatchBarrier : int {
  kBarWFull = 0,
  kBarWEmpty = kBarWFull + kPatchBStages,
  kBarPLanded = kBarWEmpty + kPatchBStages,
  kBarPFull = kBarPLanded + kPatchSlots,
  kBarPEmpty = kBarPFull + kPatchSlots,
  kPatchBarriers = kBarPEmpty + kPatchSlots,
};

// Per consumer and tile parity, the tile's bias and per-channel `other` (room for 128).
constexpr int kPatchChanBytes = 2 * 2 * 2 * kPatchBN * static_cast<int>(sizeof(float));

#ifdef FX_FUSE_WGMMA
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Wait until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrive and expect `bytes` more from the copy engine before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Expect `bytes` more from the copy engine before the current phase completes.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// The barrier counts one arrival once this thread's cp.async copies so far have landed.
__device__ __forceinline__ void cp_async_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// One contiguous copy of `bytes` (a multiple of 16) by the copy engine, counted on `bar`.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
}
// One box of a 4-D tensor map at coordinates (c0, c1, c2, c3), innermost first, by the copy
// engine (zeros outside the tensor), counted on `bar`.
__device__ __forceinline__ void tensor_copy_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                               int c2, int c3, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
// `bytes` (a multiple of 16) from shared memory to global memory by the copy engine, both
// addresses 16-byte aligned; one bulk group per commit.
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
}
// The box at coordinates (c0, c1, c2, c3) of a 4-D tensor map, written from shared memory
// by the copy engine (elements outside the tensor are skipped); one bulk group per commit.
__device__ __forceinline__ void tensor_store_4d(const CUtensorMap* map, uint32_t src, int c0, int c1,
                                                int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(map),
      "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(src)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// This thread's committed bulk stores have read their shared memory (it may be rewritten).
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// This thread's committed bulk stores are complete.
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Arrives at a named barrier without waiting for it (the threads that sync there wait).
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_v4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ uint16_t ld_shared_u16(uint32_t addr) {
  uint16_t v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_shared_v2(uint32_t addr, uint32_t x, uint32_t y) {
  asm volatile("st.shared.v2.u32 [%0], {%1, %2};\n" ::"r"(addr), "r"(x), "r"(y) : "memory");
}
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t x) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(x) : "memory");
}
__device__ __forceinline__ void st_shared_v4(uint32_t addr, uint4 v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w) : "memory");
}
template <int N> __device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
#endif

// Named barriers (0 is __syncthreads): each consumer's own (1, 2), the patch warps', both
// consumers', and the ext stage staged (the first consumer arrives, the second waits).
constexpr int kBarConsumer = 1;
constexpr int kBarPatchWarps = 3;
constexpr int kBarConsumers = 4;
constexpr int kBarExtStaged = 5;

// How the epilogue writes a lane's values (patch_consume's store_rows).
enum StoreLayout : int { kStoreSingle, kStorePixelPairs, kStageChannelRows, kStageChannelPairs };

// The ROWS kernel (NCHW output of 128-channel tiles that span whole, dense output rows;
// the host's rule: binding.cpp, stage_rows_pays) stages its output in the patch slot its
// tile's last unit was read from, and the copy engine writes it out while the consumers
// multiply the next tile; fp32 stages the first 72 channels only (as many runs as fit the
// slot: a whole 128 KB tile would not), and the consumers store the others directly;
// 16-bit stages its last kPatchExtChannels in the ext stage. A channel's tile rows are one
// contiguous run of the output (tile_h x OW pixels), staged in a row of its own,
// stage_row_bytes apart (4 words modulo 32: a warp's stores, 8 pixels x 4 channels of one
// parity, fall on distinct banks): pixel j at byte shift + ELEM j, `shift` the run's
// output address modulo 16. The run's 16-byte aligned interior goes out as one bulk copy;
// the thread that issues it stores the pixels before and after it (fewer than a 16-byte
// chunk's each; write_runs).
constexpr int stage_row_bytes(int elem) { return elem * kPatchBM + 16; }
constexpr int staged_channels(int elem) {
  return elem == 2 ? kPatchBN : kPatchSlotBytes / stage_row_bytes(elem);  // fp32: 72, all that fit
}
// The staged channels that go into the patch slot: 16-bit leaves its last
// kPatchExtChannels to the ext stage.
constexpr int slot_staged_channels(int elem) {
  return elem == 2 ? staged_channels(2) - kPatchExtChannels : staged_channels(elem);
}
static_assert(kPatchExtChannels % 8 == 0 && kPatchExtChannels < kPatchBN, "the ext stage: whole n-fragments");
static_assert(staged_channels(2) * stage_row_bytes(2) <= kPatchSlotBytes &&
                  staged_channels(4) * stage_row_bytes(4) <= kPatchSlotBytes,
              "the staged runs fit a patch slot");

// The ext stage: kPatchExtChannels 16-bit runs (none where not used).
template <Math MATH, bool ROWS> constexpr int patch_ext_bytes() {
  return patch_ext_stage<MATH, ROWS>() ? kPatchExtChannels * stage_row_bytes(2) : 0;
}

// The weight ring, the patch slots, the ext stage, the per-channel values and the mbarriers.
template <Math MATH, int BN, bool ROWS> constexpr int patch_smem_bytes() {
  return kPatchBStages * kPatchSliceBytes<BN> + kPatchSlots * kPatchSlotBytes +
         patch_ext_bytes<MATH, ROWS>() + kPatchChanBytes + kPatchBarriers * 8;
}
static_assert(patch_smem_bytes<Math::kBF16, kPatchBN, true>() <= 227 * 1024,
              "the 16-bit staged-rows kernel's shared memory fits an SM");

// The interior of a run of `len` pixels of ELEM bytes whose first byte lies `shift` bytes
// past a 16-byte boundary: pixels [lo, hi), hi - lo a multiple of 16 / ELEM (maybe none).
struct Interior {
  int lo, hi;
};
template <int ELEM> __device__ __forceinline__ Interior run_interior(int shift, int len) {
  constexpr int VEC = 16 / ELEM;
  const int lo = ((16 - shift) & 15) / ELEM;
  return {lo, lo + max(0, len - lo) / VEC * VEC};
}

// Two 16-bit values in one word, the first in the low half (its lower address).
template <typename T> __device__ __forceinline__ uint32_t pack_pair(float v0, float v1) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(v0, v1);
    return reinterpret_cast<const uint32_t&>(h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
    return reinterpret_cast<const uint32_t&>(h);
  }
}

// The 32 fp32 accumulator registers of an m64n64 wgmma: the asm operand list (%0-%31) and
// its constraints.
#define FX_FUSE_D32_LIST                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FX_FUSE_D32(d)                                                                           \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),       \
  "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),     \
  "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),     \
  "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// One wgmma with A from registers: the instruction (shape and types), its accumulator list
// and constraints, the operand numbers of A's four registers, B's descriptor and scale_d,
// and the instruction's tail (16-bit types take B's transpose flag, 0).
#define FX_FUSE_WGMMA_RS(INSTR, D_LIST, D, A_LIST, B, SCALE, TAIL)                         \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n" INSTR " " D_LIST ", " A_LIST \
               ", " B ", p, 1, 1" TAIL ";\n}\n"                                                \
               : D(d)                                                                          \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d))
#define FX_FUSE_WGMMA_RS_N128(INSTR, TAIL) \
  FX_FUSE_WGMMA_RS(INSTR, FX_FUSE_D64_LIST, FX_FUSE_D64, "{%64, %65, %66, %67}", "%68", "%69", TAIL)
#define FX_FUSE_WGMMA_RS_N64(INSTR, TAIL) \
  FX_FUSE_WGMMA_RS(INSTR, FX_FUSE_D32_LIST, FX_FUSE_D32, "{%32, %33, %34, %35}", "%36", "%37", TAIL)

// D (64 x BN, fp32) += A (64 x k, this thread's fragment in registers) * B (BN x k)^T from
// shared memory; BN = 128 or 64, k = 8 for TF32, 16 for fp16 / bf16. scale_d == 0: D = A * B.
template <Math MATH, int BN>
__device__ __forceinline__ void wgmma_rs(float (&d)[BN / 2], const uint32_t (&a)[4], uint64_t b,
                                         int scale_d) {
#ifdef FX_FUSE_WGMMA
  if constexpr (BN == 128 && MATH == Math::kTF32) {
    FX_FUSE_WGMMA_RS_N128("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32", "");
  } else if constexpr (BN == 128 && MATH == Math::kF16) {
    FX_FUSE_WGMMA_RS_N128("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16", ", 0");
  } else if constexpr (BN == 128) {
    FX_FUSE_WGMMA_RS_N128("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", ", 0");
  } else if constexpr (MATH == Math::kTF32) {
    FX_FUSE_WGMMA_RS_N64("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32", "");
  } else if constexpr (MATH == Math::kF16) {
    FX_FUSE_WGMMA_RS_N64("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16", ", 0");
  } else {
    FX_FUSE_WGMMA_RS_N64("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", ", 0");
  }
#else
  __trap();  // never launched: the host picks this kernel only where sm_90a code exists
#endif
}

// One TF32 wgmma with A and B from shared memory (descriptors): as FX_FUSE_WGMMA_RS.
#define FX_FUSE_WGMMA_SS(INSTR, D_LIST, D, A, B, SCALE)                                          \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n" INSTR " " D_LIST ", " A ", " B \
               ", p, 1, 1;\n}\n"                                                              \
               : D(d)                                                                            \
               : "l"(a), "l"(b), "r"(scale_d))

// D (64 x BN, fp32) += A (64 x 8) * B (BN x 8)^T, TF32, both K-major in shared memory;
// BN = 128 or 64. scale_d == 0: D = A * B. (PLANES; 16-bit keeps A in registers.)
template <int BN>
__device__ __forceinline__ void wgmma_ss_tf32(float (&d)[BN / 2], uint64_t a, uint64_t b, int scale_d) {
#ifdef FX_FUSE_WGMMA
  if constexpr (BN == 128) {
    FX_FUSE_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32", FX_FUSE_D64_LIST, FX_FUSE_D64,
                     "%64", "%65", "%66");
  } else {
    FX_FUSE_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32", FX_FUSE_D32_LIST, FX_FUSE_D32,
                     "%32", "%33", "%34");
  }
#else
  __trap();  // never launched: the host picks this kernel only where sm_90a code exists
#endif
}

// The descriptor of a K-major operand without swizzle whose 8 x 16-byte core matrices are
// 128 contiguous bytes each: `k_stride` bytes apart along K, 128 along M (PLANES: 8
// neighbouring positions of a plane of 16-byte positions; the next plane along K).
__device__ __forceinline__ uint64_t wgmma_desc_planes(uint32_t smem_addr, uint32_t k_stride) {
  return ((smem_addr & 0x3FFFFu) >> 4) | uint64_t{k_stride >> 4} << 16 | uint64_t{128 >> 4} << 32;
}

// A position in the weight ring: the slot, and the parity of the slot's current use.
struct RingPos {
  uint32_t slot = 0, parity = 0;

  __device__ void advance() {
    if (++slot == kPatchBStages) {
      slot = 0;
      parity ^= 1u;
    }
  }
  __device__ int previous_slot() const {
    return static_cast<int>((slot + kPatchBStages - 1) % kPatchBStages);
  }
};

// Where one tile lies: its image, first output row / column / channel, and the input
// window: first input row, first staged input column (aligned down to a 16-byte chunk)
// and the shift of the window's first column past it.
struct PatchTile {
  int64_t n;
  int oh0, ow0, n0;
  int ih0, iw0a, shift;
};

// Where the epilogue's values go: m-halves [H0, H1) of the consumer's rows, into staged
// boxes at shared address `base` (stage_tile), or straight to the output (base 0, both
// m-halves).
template <int H0, int H1> struct Stage {
  static constexpr int h0 = H0, h1 = H1;
  uint32_t base;
};

// Tile t's place (fewer than 2^31 tiles: launch_patch_t checks).
template <int VEC, bool CL, int BN>
__device__ __forceinline__ PatchTile patch_tile(const ConvParams& p, int64_t t) {
  PatchTile pt;
  const QuotRem n = divmod(static_cast<uint32_t>(t), p.div_cout_tiles);
  const QuotRem w = divmod(n.q, p.div_tiles_w);
  const QuotRem h = divmod(w.q, p.div_tiles_h);
  pt.n0 = static_cast<int>(n.r) * BN;
  pt.ow0 = static_cast<int>(w.r) * p.tile_w;
  pt.oh0 = static_cast<int>(h.r) * p.tile_h;
  pt.n = h.q;
  pt.ih0 = pt.oh0 * p.stride_h - p.pad_h;
  const int iw0 = pt.ow0 * p.stride_w - p.pad_w;
  // NCHW rows are copied in 16-byte chunks of columns: start at the chunk boundary below.
  pt.iw0a = CL ? iw0 : (iw0 >= 0 ? iw0 / VEC * VEC : -((VEC - 1 - iw0) / VEC) * VEC);
  pt.shift = iw0 - pt.iw0a;
  return pt;
}

// Writes out tile pt's staged channels [first, last) (those past Cout skipped), channel
// `first`'s run staged at shared address `base`, each run at the shift of its output
// address: thread t of `threads` issues the bulk copies of channels first + t, + threads,
// ... and stores the pixels around each itself; the copies are one bulk group.
template <int ELEM>
__device__ __forceinline__ void write_runs(const ConvParams& p, const PatchTile& pt, int first, int last,
                                           uint32_t base, int t, int threads) {
#ifdef FX_FUSE_WGMMA
  using Bits = std::conditional_t<ELEM == 2, uint16_t, uint32_t>;
  constexpr int kRowBytes = stage_row_bytes(ELEM);
  const int chans = min(last, p.Cout - pt.n0);
  const int len = min(p.tile_h, p.OH - pt.oh0) * p.OW;  // the run: the tile's rows
  Bits* y0 = static_cast<Bits*>(p.out) + (pt.n * p.y_sn + pt.oh0 * p.y_sh + pt.n0 * p.y_sc);
  for (int c = first + t; c < chans; c += threads) {
    Bits* y = y0 + c * p.y_sc;
    const int shift = static_cast<int>(reinterpret_cast<uintptr_t>(y) & 15);
    const Interior in = run_interior<ELEM>(shift, len);
    const uint32_t src = base + static_cast<uint32_t>((c - first) * kRowBytes + shift);
    if (in.hi > in.lo) bulk_store(y + in.lo, src + ELEM * in.lo, static_cast<uint32_t>(ELEM * (in.hi - in.lo)));
    // the pixels before and after the interior (fewer than 16 / ELEM each; all where it is empty)
    for (int e = in.lo == 0 ? in.hi : 0; e < len; e = e + 1 == in.lo ? in.hi : e + 1) {
      if constexpr (ELEM == 2) y[e] = ld_shared_u16(src + 2 * e);
      else y[e] = ld_shared_u32(src + 4 * e);
    }
  }
  bulk_commit();
#endif
}

// What both roles know about the CTA: its shared memory, its tiles, and the patch geometry.
struct PatchCta {
  unsigned char* patch;        // the patch slots
  uint32_t ring, slots, ext, bars;  // shared addresses: weight ring, patch slots, ext stage, mbarriers
  float* chan;                 // per consumer and tile parity: bias, then per-channel other
  const CUtensorMap* x_map;    // the input: channels-last fp32 (channels_last_patch_map),
                               // or NCHW in dense rows (nchw_patch_map, nchw_box_copy)
  const CUtensorMap* y_map;    // channels-last output (channels_last_output_map)
  int my_tiles;                // tiles this CTA walks: blockIdx.x + i * gridDim.x (fewer
                               // than 2^31 tiles: launch_patch_t checks)
  int S;                       // slices per tile
  int sets;                    // weight sets per slice: 1; 3xTF32: 2 (big, small), or 3
                               // (and the finite big) where a weight is Inf or NaN
  int row_step;                // elements between the rows of a patch
  int chan_step;               // NCHW: elements between its channels as copied (dense rows,
                               // dense_patch_rows: patch_rows x patch_pitch, so that a plane
                               // of 4 channels is 4 chan_step words)

  __device__ uint32_t bar(int b) const { return bars + 8u * static_cast<uint32_t>(b); }
  __device__ int64_t tile(int64_t i) const { return blockIdx.x + i * gridDim.x; }
};

// Warp 0 of the producer, one thread: the weight slices, in the order the consumers use
// them, each into the next ring slot once both consumers are past its previous slice.
template <Math MATH, int BN>
__device__ __forceinline__ void patch_produce_weights(const ConvParams& p, const PatchCta& k) {
#ifdef FX_FUSE_WGMMA
  using T = typename MathTraits<MATH>::T;
  constexpr int CB = kSliceBytes / static_cast<int>(sizeof(T));
  constexpr int kSet = BN * CB;  // elements of one set of a slice
  // sets prepared per slice, and copied (3xTF32: the finite big only where it differs)
  constexpr int kStored = MATH == Math::kF32x3 ? 3 : 1;
  const int sets = MATH == Math::kF32x3 ? k.sets : 1;
  const T* wp = static_cast<const T*>(p.wprep);
  RingPos at;  // where the next set goes
  for (int64_t i = 0; i < k.my_tiles; ++i) {
    const uint32_t nt = divmod(static_cast<uint32_t>(k.tile(i)), p.div_cout_tiles).r;  // the channel tile
    const T* w = wp + static_cast<int64_t>(nt) * k.S * kStored * kSet;
    for (int s = 0; s < k.S; ++s, w += kStored * kSet) {
      for (int j = 0; j < sets; ++j) {
        constexpr int kBytes = kPatchSliceBytes<BN>;
        mbar_wait(k.bar(kBarWEmpty + at.slot), at.parity ^ 1u);
        mbar_arrive_expect(k.bar(kBarWFull + at.slot), kBytes);
        bulk_copy(k.ring + at.slot * kBytes, w + j * kSet, kBytes, k.bar(kBarWFull + at.slot));
        at.advance();
      }
    }
  }
#endif
}

// Warps 1-3 of the producer (kPatchCopyThreads threads): the units' input patches, each
// into its slot as soon as both consumers are done with the unit before it there. NCHW:
// each channel row's chunks inside the image come by one bulk copy (the copy engine; the
// rows are dense, x_sw == 1) and its padding chunks are zeroed with shared stores
// (dense_patch_rows: the whole patch by one tensor copy, k.x_map, where nchw_box_copy);
// channels-last fp32: the whole patch by one tensor copy (k.x_map: each pixel's CB
// channels and the next 16 bytes' worth as its padding, zeros outside the image and past
// C_in); channels-last 16-bit: one 16-byte cp.async per chunk, padding zero-filled by the
// copy. Once it has landed, a TF32 patch is rounded in place (once per element, not once
// per tap that reads it) and a 16-bit NCHW one gets its channel pairs interleaved; then
// the consumers may read it.
template <Math MATH, bool CL, int BN, bool ROWS, bool PLANES>
__device__ __forceinline__ void patch_produce_patches(const ConvParams& p, const PatchCta& k) {
#ifdef FX_FUSE_WGMMA
  using T = typename MathTraits<MATH>::T;
  constexpr int ELEM = sizeof(T);
  constexpr int VEC = 16 / ELEM;
  constexpr int CB = kSliceBytes / ELEM;
  constexpr int CP = kPatchChannelPitch;
  constexpr int CPX = kPatchPixelBytes / ELEM;
  constexpr bool kBox = patch_box_copy(CL, ELEM);
  constexpr bool kDense = dense_patch_rows(ROWS, PLANES, ELEM);  // NCHW channel rows k.chan_step apart
  const int tid = threadIdx.x - 32;
  const T* __restrict__ x = static_cast<const T*>(p.x);

  // Channels-last 16-bit: thread t copies the 16-byte chunks q = t, t + kPatchCopyThreads,
  // ... of a patch, chunk q = (row, column, channel chunk) with patch_chunks = 8 chunks per
  // column, split by multiply-high with a rounded-up reciprocal (exact for q * divisor <
  // 2^32), so that the iterations are independent.
  const int pixel_chunks = p.patch_rows * p.patch_chunks;
  const uint32_t inv_chunks =
      static_cast<uint32_t>(((uint64_t{1} << 32) + p.patch_chunks - 1) / p.patch_chunks);
  auto issue_pixels = [&](const PatchTile& pt, int cb, uint32_t dst, uint32_t landed) {
    const T* img = x + pt.n * p.x_sn;
#pragma unroll 4
    for (int q = tid; q < pixel_chunks; q += kPatchCopyThreads) {
      const int r = static_cast<int>(__umulhi(static_cast<uint32_t>(q), inv_chunks));
      const int rem = q - r * p.patch_chunks, c = (rem & 7) * VEC, col = rem >> 3;
      const int ci = cb * CB + c, ih = pt.ih0 + r, iw = pt.iw0a + col;
      // A chunk lies wholly inside or wholly outside the image (Cin % VEC == 0).
      const bool ok = ci < p.Cin && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
                      static_cast<unsigned>(iw) < static_cast<unsigned>(p.W);
      const T* src = ok ? img + (ci * static_cast<int>(p.x_sc) + ih * static_cast<int>(p.x_sh) +
                                 iw * static_cast<int>(p.x_sw))
                        : x;
      cp_async_16_zfill(dst + (r * k.row_step + col * CPX + c) * ELEM, src, ok);
    }
    cp_async_arrive(landed);
  };
  // Channels-last fp32 and dense rows: the first patch thread issues the patch's tensor
  // copy (the box: a pixel's kPatchPixelBytes x patch_pitch columns x patch_rows rows;
  // NCHW: patch_pitch columns x patch_rows rows x CB channels), the others only arrive.
  const uint32_t box_bytes = static_cast<uint32_t>(p.patch_rows * k.row_step * ELEM * (CL ? 1 : CB));
  auto issue_box = [&](const PatchTile& pt, int cb, uint32_t dst, uint32_t landed) {
    if (tid == 0) {
      mbar_arrive_expect(landed, box_bytes);
      if constexpr (CL) tensor_copy_4d(dst, k.x_map, cb * CB, pt.iw0a, pt.ih0, static_cast<int>(pt.n), landed);
      else tensor_copy_4d(dst, k.x_map, pt.iw0a, pt.ih0, cb * CB, static_cast<int>(pt.n), landed);
    } else {
      mbar_arrive(landed);
    }
  };
  // NCHW: thread t takes the channel rows q = t, t + kPatchCopyThreads, ... (channel
  // q / patch_rows, row q % patch_rows). The tile's columns inside the image are its
  // chunks [j0, j1) (W % VEC == 0: a chunk lies wholly inside or outside), the same for
  // every row: one bulk copy of them per row inside the image, zeros elsewhere.
  auto issue_rows = [&](const PatchTile& pt, int cb, uint32_t dst, uint32_t landed) {
    const T* img = x + pt.n * p.x_sn;
    const int j0 = pt.iw0a < 0 ? min(-pt.iw0a / VEC, p.patch_chunks) : 0;
    const int j1 = max(j0, min(p.patch_chunks, (p.W - pt.iw0a) / VEC));
    for (int q = tid; q < CB * p.patch_rows; q += kPatchCopyThreads) {
      const int c = q / p.patch_rows, r = q - c * p.patch_rows;
      const int ci = cb * CB + c, ih = pt.ih0 + r;
      const uint32_t row = dst + static_cast<uint32_t>((c * k.chan_step + r * p.patch_pitch) * ELEM);
      const bool in = ci < p.Cin && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) && j1 > j0;
      const int z0 = in ? j0 : p.patch_chunks, z1 = in ? j1 : p.patch_chunks;
      for (int j = 0; j < z0; ++j) st_shared_v4(row + 16 * j, make_uint4(0, 0, 0, 0));
      for (int j = z1; j < p.patch_chunks; ++j) st_shared_v4(row + 16 * j, make_uint4(0, 0, 0, 0));
      if (in) {
        const uint32_t bytes = static_cast<uint32_t>(16 * (j1 - j0));
        mbar_expect_tx(landed, bytes);
        bulk_copy(row + 16 * j0,
                  img + (ci * static_cast<int>(p.x_sc) + ih * static_cast<int>(p.x_sh) + pt.iw0a + j0 * VEC),
                  bytes, landed);
      }
    }
    mbar_arrive(landed);  // after this thread's zeros; its copies still count until they land
  };
  auto issue_patch = [&](int64_t i, int cb, int slot) {
    const PatchTile pt = patch_tile<VEC, CL, BN>(p, k.tile(i));
    const uint32_t dst = k.slots + static_cast<uint32_t>(slot) * kPatchSlotBytes;
    if constexpr (kBox) issue_box(pt, cb, dst, k.bar(kBarPLanded + slot));
    else if constexpr (CL) issue_pixels(pt, cb, dst, k.bar(kBarPLanded + slot));
    else if (nchw_box_copy(ROWS, PLANES, ELEM, p.patch_pitch)) issue_box(pt, cb, dst, k.bar(kBarPLanded + slot));
    else issue_rows(pt, cb, dst, k.bar(kBarPLanded + slot));
  };
  // TF32: round the slot's patch in place, 16-byte chunk by chunk over the whole region
  // the copies write (padding between rows or pixels included: never read, harmless).
  const int round_chunks = CL ? p.patch_rows * k.row_step * ELEM / 16 : CB * CP * ELEM / 16;
  auto round_patch = [&](int slot) {
    uint4* base = reinterpret_cast<uint4*>(k.patch + slot * kPatchSlotBytes);
#pragma unroll 4
    for (int q = tid; q < round_chunks; q += kPatchCopyThreads) {
      uint4 v = base[q];
      v.x = f32_to_tf32(__uint_as_float(v.x));
      v.y = f32_to_tf32(__uint_as_float(v.y));
      v.z = f32_to_tf32(__uint_as_float(v.z));
      v.w = f32_to_tf32(__uint_as_float(v.w));
      base[q] = v;
    }
  };

  // PLANES (TF32 NCHW): transpose the slot's patch in place, each group of 4 channel rows
  // (kPatchChannelPitch apart; dense rows: k.chan_step = patch_rows x patch_pitch) into one
  // plane of 16-byte positions (a position's 4 channels, rounded to TF32 on the way), where
  // wgmma reads 8 neighbouring positions as one 128-byte core matrix. Two groups at a time:
  // all of their reads come before their writes (a barrier of the patch warps between);
  // thread t takes positions t, t + kPatchCopyThreads, ...
  static_assert(!PLANES || (MATH == Math::kTF32 && !CL), "planes: TF32 NCHW patches");
  constexpr int kPlanePer = (CP + kPatchCopyThreads - 1) / kPatchCopyThreads;
  constexpr int kGroupsPerRound = 2;
  const int positions = p.patch_rows * p.patch_pitch;
  auto transpose_planes = [&](int slot) {
    float* base = reinterpret_cast<float*>(k.patch + slot * kPatchSlotBytes);
    const int cs = k.chan_step;  // kPatchChannelPitch, a constant, where rows are not dense
    for (int g0 = 0; g0 < CB / 4; g0 += kGroupsPerRound) {
      uint4 v[kGroupsPerRound][kPlanePer];
#pragma unroll
      for (int g = 0; g < kGroupsPerRound; ++g) {
        // A thread reads its positions clamped to the patch where the channel pitch is the
        // constant kPatchChannelPitch; where it is a run-time value (dense rows) all
        // kPlanePer of them, plain loads at fixed offsets from one address per channel
        // (clamped ones would each need an address of their own; bounded ones, a branch
        // each): those past the patch read what lies there, inside the slot, and are not
        // stored.
        const float* group = base + (g0 + g) * 4 * cs;
#pragma unroll
        for (int i = 0; i < kPlanePer; ++i) {
          const int q = kDense ? tid + i * kPatchCopyThreads : min(tid + i * kPatchCopyThreads, positions - 1);
          v[g][i] = make_uint4(f32_to_tf32(group[q]), f32_to_tf32(group[cs + q]), f32_to_tf32(group[2 * cs + q]),
                               f32_to_tf32(group[3 * cs + q]));
        }
      }
      named_sync(kBarPatchWarps, kPatchCopyThreads);
#pragma unroll
      for (int g = 0; g < kGroupsPerRound; ++g) {
        uint4* group = reinterpret_cast<uint4*>(base + (g0 + g) * 4 * cs);
#pragma unroll
        for (int i = 0; i < kPlanePer; ++i) {
          const int q = tid + i * kPatchCopyThreads;
          if (q < positions) group[q] = v[g][i];
        }
      }
    }
  };

  // 16-bit NCHW: interleave each pair of channel planes, so that a channel pair at one
  // position is one aligned word (what a fragment register holds): chunk j of the two
  // planes (8 positions each) becomes words 8 j .. 8 j + 7 of the pair's plane, whose
  // planes the consumers read CP elements apart. Dense rows (kDense, k.chan_step elements a
  // channel) move to that pitch on the way: pairs last to first, so that no pair's place
  // covers a pair not yet read (each pair's place starts at or past where it landed). All
  // of a round's chunks are read before any is written: kInterleavePairs pairs a round,
  // then a barrier of the patch warps.
  static_assert(ELEM == 4 || CP * ELEM / 16 <= kPatchCopyThreads, "one chunk per thread and pair");
  constexpr int kInterleavePairs = 2;  // (v62: one a round was slower; four spill)
  static_assert(ELEM == 4 || (CB / 2) % kInterleavePairs == 0, "whole rounds of pairs");
  auto interleave_pairs = [&](int slot) {
    const uint32_t plane = static_cast<uint32_t>(k.chan_step * ELEM);  // between landed planes
    // Every thread takes every barrier at the same instruction (bar.sync is warp-aligned);
    // a thread without a chunk of its own loads chunk 0 and stores nothing.
    const bool mine = 16 * tid < static_cast<int>(plane);
    const uint32_t t = mine ? static_cast<uint32_t>(tid) : 0u;
    const uint32_t base = k.slots + static_cast<uint32_t>(slot) * kPatchSlotBytes;
    uint32_t dense = base + 16 * t + (CB - 2) * plane;  // dense rows: where pair q landed
    auto place = [&](int n) {  // where the n-th pair taken goes (dense rows: last to first)
      const int q = kDense ? CB / 2 - 1 - n : n;
      return base + static_cast<uint32_t>(q * 2 * CP * ELEM);
    };
    for (int i = 0; i < CB / 2; i += kInterleavePairs) {
      uint4 a[kInterleavePairs], b[kInterleavePairs];
#pragma unroll
      for (int j = 0; j < kInterleavePairs; ++j) {
        const uint32_t from = kDense ? dense - static_cast<uint32_t>(2 * j) * plane : place(i + j) + 16 * t;
        a[j] = ld_shared_v4(from);
        b[j] = ld_shared_v4(from + plane);
      }
      dense -= static_cast<uint32_t>(2 * kInterleavePairs) * plane;
      named_sync(kBarPatchWarps, kPatchCopyThreads);
      if (mine) {
#pragma unroll
        for (int j = 0; j < kInterleavePairs; ++j) {
          const uint32_t to = place(i + j) + 32 * t;
          st_shared_v4(to, make_uint4(__byte_perm(a[j].x, b[j].x, 0x5410), __byte_perm(a[j].x, b[j].x, 0x7632),
                                      __byte_perm(a[j].y, b[j].y, 0x5410), __byte_perm(a[j].y, b[j].y, 0x7632)));
          st_shared_v4(to + 16, make_uint4(__byte_perm(a[j].z, b[j].z, 0x5410), __byte_perm(a[j].z, b[j].z, 0x7632),
                                           __byte_perm(a[j].w, b[j].w, 0x5410), __byte_perm(a[j].w, b[j].w, 0x7632)));
        }
      }
    }
  };

  // ROWS: write out tile i's channels staged in `slot` (write_runs: thread t of the patch
  // warps issues the bulk copies of channels t, t + kPatchCopyThreads, ...); then the copy
  // engine's reads of the slot are awaited and the patch warps meet, so that no copy
  // overwrites the slot before every run is read.
  static_assert(!ROWS || (!CL && MATH != Math::kF32x3 && BN == kPatchBN),
                "staged rows: TF32 or 16-bit NCHW, 128-channel tiles");
  auto write_rows = [&](int i, int slot) {
    write_runs<ELEM>(p, patch_tile<VEC, CL, BN>(p, k.tile(i)), 0, slot_staged_channels(ELEM),
                     k.slots + static_cast<uint32_t>(slot * kPatchSlotBytes), tid, kPatchCopyThreads);
    bulk_wait_read();
    named_sync(kBarPatchWarps, kPatchCopyThreads);
  };

  // ROWS: unit u's slot last held unit u - 2; where that ended tile i - back (cb ==
  // first_staged), the tile's output is staged there.
  const int back = p.cblocks == 1 ? 2 : 1, first_staged = p.cblocks == 1 ? 0 : 1;
  int64_t u = 0;  // units so far: unit u goes into slot u % 2
  for (int i = 0; i < k.my_tiles; ++i) {
    for (int cb = 0; cb < p.cblocks; ++cb, ++u) {
      const int slot = static_cast<int>(u & 1);
      const uint32_t parity = static_cast<uint32_t>(u >> 1) & 1u;
      mbar_wait(k.bar(kBarPEmpty + slot), parity ^ 1u);
      if (ROWS && cb == first_staged && i >= back) write_rows(i - back, slot);
      issue_patch(i, cb, slot);
      mbar_wait(k.bar(kBarPLanded + slot), parity);
      if constexpr (PLANES) transpose_planes(slot);
      else if constexpr (MATH == Math::kTF32) round_patch(slot);
      else if constexpr (!CL && ELEM == 2) interleave_pairs(slot);
      // the slot's next copies (the copy engine's) come after these shared stores
      if constexpr (!CL || kBox) fence_proxy_async();
      mbar_arrive(k.bar(kBarPFull + slot));
    }
  }
  // The last tiles' staged outputs (of the units in flight at the end: the last tile's,
  // and the one before where a tile is one unit), once the consumers have staged them.
  if constexpr (ROWS) {
    for (int i = max(0, k.my_tiles - back); i < k.my_tiles; ++i) {
      const int64_t last = (static_cast<int64_t>(i) + 1) * p.cblocks - 1;  // the tile's last unit
      const int slot = static_cast<int>(last & 1);
      mbar_wait(k.bar(kBarPEmpty + slot), static_cast<uint32_t>(last >> 1) & 1u);
      write_rows(i, slot);
    }
    bulk_wait();  // the copy engine's writes are done
  }
#endif
}

// Warpgroup 1 + c (c = 0, 1): tile rows 128 c .. 128 c + 127 of every tile of the CTA.
template <Math MATH, bool CL, int BN, bool ROWS, bool PLANES>
__device__ __forceinline__ void patch_consume(const ConvParams& p, const PatchCta& k, int c) {
#ifdef FX_FUSE_WGMMA
  using T = typename MathTraits<MATH>::T;
  constexpr int ELEM = sizeof(T);
  constexpr int VEC = 16 / ELEM;             // elements per 16-byte chunk
  constexpr int CB = kSliceBytes / ELEM;     // channels per block = K per slice
  constexpr int KSTEP = 32 / ELEM;           // K per wgmma (8 TF32, 16 fp16 / bf16)
  constexpr int NSTEP = CB / KSTEP;          // wgmmas per slice and m-half (4)
  constexpr int CP = kPatchChannelPitch;  // NCHW: elements between channels of a patch
  constexpr int CPX = kPatchPixelBytes / ELEM;  // channels-last: elements between pixels
  // Element strides inside a patch: between channels, columns; rows: row_step.
  constexpr int CH = CL ? 1 : CP;
  constexpr int COL = CL ? CPX : 1;
  // A fragment register is one 32-bit word of the patch: fp32, and 16-bit NCHW, whose
  // channel pairs the producer interleaved (pair planes of CP words; positions within a
  // plane count words there, as they count elements in an fp32 plane).
  constexpr bool WORDS = ELEM == 4 || !CL;
  // The tile's output leaves through the slot of its last unit (staged by the epilogue,
  // written by the copy engine): channels-last output, and ROWS; the slot is released
  // after the epilogue.
  constexpr bool kStaged = CL || ROWS;
  constexpr bool kExt = patch_ext_stage<MATH, ROWS>();  // 16-bit staged rows: the ext stage
  // 3xTF32 runs its three products on TF32 wgmmas
  constexpr Math WGMMA_MATH = MATH == Math::kF32x3 ? Math::kTF32 : MATH;
  // Channels-last output is staged (stage_tile): boxes of kBoxCh channels (128 bytes) x 64
  // pixels; kHalfBytes per m-half of a consumer; in kRounds rounds where both consumers'
  // whole tiles do not fit a patch slot (from its first 1024-byte boundary).
  constexpr int kBoxCh = kSliceBytes / ELEM;
  constexpr int kBoxes = BN / kBoxCh;
  constexpr int kBoxBytes = 64 * kSliceBytes;
  constexpr int kHalfBytes = kBoxes * kBoxBytes;
  constexpr int kRounds = 4 * kHalfBytes <= kPatchSlotBytes - 1024 ? 1 : 2;
  static_assert(2 * kHalfBytes <= kPatchSlotBytes - 1024, "an m-half of both consumers fits a slot");

  const int ct = threadIdx.x - kPatchProducerThreads - 128 * c;  // thread in the warpgroup
  const int lane = ct & 31, wq = ct >> 5, g = lane >> 2, tq = lane & 3;
  const int row0 = 128 * c + 16 * wq + g;  // this thread's first tile row

  // This thread's four tile rows (m-half h, row g or g + 8 of its warp's 16): their offsets
  // inside a patch (before the tile's shift and the tap's offset), with the thread's
  // first channel (tq, or the pair 2 tq) folded in. Fixed for the whole kernel.
  int pix[2][2];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = row0 + h * 64 + 8 * hi;
      pix[h][hi] = (r / p.tile_w) * p.stride_h * k.row_step + (r % p.tile_w) * p.stride_w * COL +
                   (WORDS ? tq : 2 * tq) * CH;
    }

  // Where a slice reads its patch: the tap (index, kw) and its offset inside the patch,
  // the channel block and the slot. Slices are walked in order, without divisions.
  struct Slice {
    int tap, kw, off, cb, slot;
  };
  auto next_slice = [&](Slice s) {
    if (++s.tap == p.taps) {
      s.tap = s.kw = s.off = 0;
      ++s.cb;
      s.slot ^= 1;
    } else if (++s.kw == p.KW) {
      s.kw = 0;
      s.off += p.dil_h * k.row_step - (p.KW - 1) * p.dil_w * COL;
    } else {
      s.off += p.dil_w * COL;
    }
    return s;
  };

  // A fragments of a slice: [m-half][k-step][register], in the wgmma register layout
  // (register e: row g + 8 (e & 1), k = tq + 4 (e >> 1) for TF32; the k pair 2 tq + 8 (e >> 1)
  // for 16-bit).
  using Frag = uint32_t[2][NSTEP][4];
  auto build_a = [&](const Slice& s, int shift, Frag& a) {
    constexpr int UNIT = WORDS ? 4 : ELEM;  // the bytes `base` and `pix` count in
    const int base = s.slot * (kPatchSlotBytes / UNIT) + s.off + shift;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if constexpr (WORDS) {  // k-step st: words 8 st .. 8 st + 7 of the (pair) planes
        const uint32_t* lo = reinterpret_cast<const uint32_t*>(k.patch) + base + pix[h][0];
        const uint32_t* hi = reinterpret_cast<const uint32_t*>(k.patch) + base + pix[h][1];
#pragma unroll
        for (int st = 0; st < NSTEP; ++st) {
          a[h][st][0] = lo[st * 8 * CH];
          a[h][st][1] = hi[st * 8 * CH];
          a[h][st][2] = lo[st * 8 * CH + 4 * CH];
          a[h][st][3] = hi[st * 8 * CH + 4 * CH];
        }
      } else {  // channels-last 16-bit: a channel pair is one aligned word
        const T* sP = reinterpret_cast<const T*>(k.patch);
#pragma unroll
        for (int st = 0; st < NSTEP; ++st) {
          const uint32_t* l = reinterpret_cast<const uint32_t*>(sP + base + pix[h][0] + st * KSTEP);
          const uint32_t* u = reinterpret_cast<const uint32_t*>(sP + base + pix[h][1] + st * KSTEP);
          a[h][st][0] = l[0];
          a[h][st][1] = u[0];
          a[h][st][2] = l[4];
          a[h][st][3] = u[4];
        }
      }
    }
  };

  float acc[2][BN / 2] = {};

  // PLANES: A straight from the transposed patch (transpose_planes). This consumer's
  // m-half h is 64 neighbouring positions of one patch row, from byte a_pix[h] (before the
  // tile's shift and the tap's offset); k-step st reads planes 2 st and 2 st + 1.
  uint32_t a_pix[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = 128 * c + 64 * h;
    a_pix[h] = static_cast<uint32_t>(16 * ((r / p.tile_w) * p.stride_h * k.row_step + r % p.tile_w));
  }
  const uint32_t plane_bytes = 16u * static_cast<uint32_t>(k.chan_step);
  auto multiply_planes = [&](const Slice& s, int shift, uint32_t slot, bool first) {
    const uint32_t b_tile = k.ring + slot * kPatchSliceBytes<BN>;
    const uint32_t a = k.slots + static_cast<uint32_t>(s.slot * kPatchSlotBytes + 16 * (s.off + shift));
    wgmma_fence();
#pragma unroll
    for (int st = 0; st < NSTEP; ++st)
#pragma unroll
      for (int h = 0; h < 2; ++h)  // the tile's first slice overwrites the accumulators
        wgmma_ss_tf32<BN>(acc[h], wgmma_desc_planes(a + a_pix[h] + 2 * st * plane_bytes, plane_bytes),
                          wgmma_desc(b_tile + st * 32), !(first && st == 0));
    wgmma_commit();
  };

  auto multiply = [&](const Frag& a, uint32_t slot, bool first) {
    const uint32_t b_tile = k.ring + slot * kPatchSliceBytes<BN>;
    wgmma_fence();
#pragma unroll
    for (int st = 0; st < NSTEP; ++st)
#pragma unroll
      for (int h = 0; h < 2; ++h)  // the tile's first slice overwrites the accumulators
        wgmma_rs<WGMMA_MATH, BN>(acc[h], a[h][st], wgmma_desc(b_tile + st * 32), !(first && st == 0));
    wgmma_commit();
  };

  // Bias and a per-channel `other` (or the scalar) of tile i's channels, in this
  // consumer's buffer i % 2: written at the tile's start, read by its epilogue after the
  // consumer's barrier, rewritten two tiles later (after every warp passed the barrier of
  // the tile between).
  const bool other_per_channel = p.o_sn == 0 && p.o_sh == 0 && p.o_sw == 0;
  auto chan_of = [&](int buf) { return k.chan + (2 * c + buf) * 2 * kPatchBN; };
  auto load_channels = [&](const PatchTile& pt, int buf) {
    const int co = pt.n0 + ct;
    const bool ok = co < p.Cout;
    float* dst = chan_of(buf);
    dst[ct] = ok && p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[co]) : 0.f;
    dst[kPatchBN + ct] = ok && other_per_channel ? load_other(p, co * p.o_sc) : 0.f;
  };

  // Epilogue of a tile whose accumulators are complete: + bias, relu, + other, one store.
  // `other_at(off, c)`: `other` at element offset `off` (pixel and channel) or, per
  // channel, at tile channel c; `any_channel`: whether it may be read at every channel of
  // the tile (per channel: shared memory), so that values are computed without branches
  // and only their stores wait on the channel bound. Addresses advance by channel strides
  // (no multiply per element); the channel bound is checked only in a tile that crosses
  // Cout. `layout`:
  //   kStoreSingle: one element per store;
  //   kStorePixelPairs (16-bit NCHW output): the lanes of rows g and g ^ 1 (lane ^ 4)
  //     trade one word per channel pair, so that the lane of the even row holds the
  //     pair's first channel at both pixels and the lane of the odd row its second: one
  //     4-byte store of neighbouring pixels (tile_w and OW are even: a pair never crosses
  //     a row);
  //   kStageChannelRows (the TF32 ROWS kernel whose consumers hold fragments; the other
  //     ROWS kernels take store_rows_pairwise): each value one shared store into its
  //     channel's staged run at stage.base (stage_row_bytes; the producer's patch warps
  //     have the runs written out); the first 72 channels, the others as kStoreSingle;
  //   kStageChannelPairs (channels-last output): a lane's two channels of a pixel, one
  //     shared store into the staged boxes of m-halves [stage.h0, stage.h1) (stage_tile);
  //     the copy engine writes them to the output.
  // kStageChannelRows: a value into its staged run at shared address `addr`, by a plain
  // store, which the compiler may order freely with the other channels' global stores (an
  // asm store orders them, and ptxas then spills).
  auto stage_value = [&](uint32_t addr, float v) {
    *reinterpret_cast<T*>(k.patch + (addr - k.slots)) = from_float<T>(v);
  };
  auto store_rows = [&](const PatchTile& pt, const float* chan, auto other_at, auto any_channel,
                        auto layout, auto stage) {
    constexpr int LAYOUT = decltype(layout)::value;
    constexpr bool kPixelPairs = LAYOUT == kStorePixelPairs;
    constexpr bool kAnyChannel = decltype(any_channel)::value;
    constexpr int kRowBytes = stage_row_bytes(ELEM), kStagedNT = staged_channels(ELEM) / 8;
    const int tw_shift = __ffs(p.tile_w) - 1;  // tile_w is a power of two
    T* __restrict__ out = static_cast<T*>(p.out);
    const bool full_n = pt.n0 + BN <= p.Cout;
    const int odd = kPixelPairs ? g & 1 : 0;  // pixel pairs: this lane takes channel 2 tq + 1
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        if (h < stage.h0 || h >= stage.h1) continue;
        const int r = row0 + h * 64 + 8 * hi - odd;  // pixel pairs: the pair's first row
        const int oh = pt.oh0 + (r >> tw_shift), ow = pt.ow0 + (r & (p.tile_w - 1));
        const bool row_ok = oh < p.OH && ow < p.OW;
        // (pixel pairs: skip only rows that no lane of the warp stores, as every lane
        // takes the shuffles)
        if (kPixelPairs ? !__any_sync(0xffffffffu, row_ok) : !row_ok) continue;
        const int c0 = 2 * tq + odd;
        T* __restrict__ y = out + (pt.n * p.y_sn + oh * p.y_sh + ow * p.y_sw + (pt.n0 + c0) * p.y_sc);
        int64_t o = pt.n * p.o_sn + oh * p.o_sh + ow * p.o_sw + (pt.n0 + c0) * p.o_sc;
        // kStageChannelRows: the pixel's place in its channel's run, where tile channel
        // c0's value of it is staged (before the shift), and the shifts of the lane's two
        // channels (the same at every nt: 8 channels are a multiple of 16 bytes apart)
        const int at_run = (r >> tw_shift) * p.OW + (r & (p.tile_w - 1));
        const uint32_t row_at = stage.base + static_cast<uint32_t>(c0 * kRowBytes + ELEM * at_run);
        auto shift_of = [&](const T* pixel) {
          return static_cast<uint32_t>((reinterpret_cast<uintptr_t>(pixel) - ELEM * at_run) & 15);
        };
        const uint32_t shift0 = shift_of(y), shift1 = shift_of(y + p.y_sc);
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
          const int cc = nt * 8 + c0;
          const float* a = acc[h] + nt * 4 + 2 * hi;
          if constexpr (kPixelPairs) {
            // The lane's two channels at row g, finished (`other` is per channel here),
            // then traded: every lane takes the shuffle.
            const int cp = nt * 8 + 2 * tq;
            const float2 b = *reinterpret_cast<const float2*>(chan + cp);
            const float v0 = fused_value(a[0], b.x, other_at(0, cp));
            const float v1 = fused_value(a[1], b.y, other_at(0, cp + 1));
            // low half: channel cp, high half: cp + 1; the even row keeps the low halves
            // of its word and its mate's, the odd row the high halves
            static_assert(ELEM == 2 || !kPixelPairs, "pixel pairs are for 16-bit output");
            const uint32_t word = pack_pair<T>(v0, v1);
            const uint32_t mate = __shfl_xor_sync(0xffffffffu, word, 4);
            if (row_ok & (full_n | (pt.n0 + cc < p.Cout)))  // a predicated store, no branch
              *reinterpret_cast<uint32_t*>(y) = __byte_perm(word, mate, odd ? 0x3276 : 0x5410);
          } else {
            const float2 b = *reinterpret_cast<const float2*>(chan + cc);
            if constexpr (LAYOUT == kStageChannelPairs) {
              // Cout is even: a pair is inside Cout or outside it; channels past Cout are
              // staged too where that reads nothing outside `other` (the copy skips them)
              if (kAnyChannel || full_n || pt.n0 + cc < p.Cout) {
                const float v0 = fused_value(a[0], b.x, other_at(o, cc));
                const float v1 = fused_value(a[1], b.y, other_at(o + p.o_sc, cc + 1));
                const int R = r & 63, cb = cc % kBoxCh * ELEM;  // pixel row, byte in the box row
                const uint32_t at = stage.base + static_cast<uint32_t>((h - stage.h0) * kHalfBytes +
                                    cc / kBoxCh * kBoxBytes + R * 128 + (((cb >> 4) ^ (R & 7)) << 4) + (cb & 15));
                if constexpr (ELEM == 4) st_shared_v2(at, __float_as_uint(v0), __float_as_uint(v1));
                else st_shared_u32(at, pack_pair<T>(v0, v1));
              }
            } else if (LAYOUT == kStageChannelRows && nt < kStagedNT) {
              // channels past Cout are staged too where that reads nothing outside `other`
              // (write_rows skips them); fp32's channels after the staged ones go straight
              // to the output below
              const uint32_t at = row_at + static_cast<uint32_t>(nt * 8 * kRowBytes);
              if (kAnyChannel || full_n || pt.n0 + cc < p.Cout)
                stage_value(at + shift0, fused_value(a[0], b.x, other_at(o, cc)));
              if (kAnyChannel || full_n || pt.n0 + cc + 1 < p.Cout)
                stage_value(at + kRowBytes + shift1, fused_value(a[1], b.y, other_at(o + p.o_sc, cc + 1)));
            } else if constexpr (kAnyChannel) {
              const float v0 = fused_value(a[0], b.x, other_at(o, cc));
              const float v1 = fused_value(a[1], b.y, other_at(o + p.o_sc, cc + 1));
              // (| rather than ||: a predicated store, no branch)
              if (full_n | (pt.n0 + cc < p.Cout)) y[0] = from_float<T>(v0);
              if (full_n | (pt.n0 + cc + 1 < p.Cout)) y[p.y_sc] = from_float<T>(v1);
            } else {
              if (full_n || pt.n0 + cc < p.Cout) y[0] = from_float<T>(fused_value(a[0], b.x, other_at(o, cc)));
              if (full_n || pt.n0 + cc + 1 < p.Cout)
                y[p.y_sc] = from_float<T>(fused_value(a[1], b.y, other_at(o + p.o_sc, cc + 1)));
            }
          }
          y += 8 * p.y_sc;
          o += 8 * p.o_sc;
        }
      }
  };
  // PLANES (TF32 NCHW output: kStoreSingle, or kStageChannelRows in the ROWS kernel) and
  // the 16-bit ROWS kernel: as store_rows, with channel pairs outermost, so that each
  // pair's bias and per-channel `other` are read from shared memory once for the thread's
  // four rows instead of once a row, and the four rows' values are independent of each
  // other. The four rows' state fits beside the accumulators there (the planes consumers
  // hold no fragments; 16-bit ROWS stages every channel: no output addresses); the other
  // register-path kernels keep store_rows' order.
  auto store_rows_pairwise = [&](const PatchTile& pt, const float* chan, auto other_at, auto any_channel,
                               auto layout, auto stage) {
    constexpr bool kStaging = decltype(layout)::value == kStageChannelRows;
    constexpr bool kAnyChannel = decltype(any_channel)::value;
    constexpr int kRowBytes = stage_row_bytes(ELEM), kStagedNT = kStaging ? staged_channels(ELEM) / 8 : 0;
    constexpr int kSlotNT = slot_staged_channels(ELEM) / 8;
    const int tw_shift = __ffs(p.tile_w) - 1;  // tile_w is a power of two
    const bool full_n = pt.n0 + BN <= p.Cout;
    const int c0 = 2 * tq;
    // Row j (m-half j / 2, row g + 8 (j % 2) of the warp's 16) at channel c0: inside the
    // output, the output and `other` there, and (staged) the shared addresses of the
    // lane's two channels' values in their runs (store_rows: row_at plus the shifts).
    // store_rows keeps its own copy of this setup, after its rows' bound check: one helper
    // for both moved that work and made ptxas (13.0) spill 40-56 bytes in the TF32
    // channels-last kernel, which has no registers to spare.
    struct Row {
      bool ok;
      T* y;
      int64_t o;
      uint32_t at0, at1;
    };
    Row rows[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = row0 + (j >> 1) * 64 + 8 * (j & 1);
      const int oh = pt.oh0 + (r >> tw_shift), ow = pt.ow0 + (r & (p.tile_w - 1));
      Row& w = rows[j];
      w.ok = oh < p.OH && ow < p.OW;
      w.y = static_cast<T*>(p.out) + (pt.n * p.y_sn + oh * p.y_sh + ow * p.y_sw + (pt.n0 + c0) * p.y_sc);
      w.o = pt.n * p.o_sn + oh * p.o_sh + ow * p.o_sw + (pt.n0 + c0) * p.o_sc;
      const int at_run = (r >> tw_shift) * p.OW + (r & (p.tile_w - 1));
      const uint32_t at = stage.base + static_cast<uint32_t>(c0 * kRowBytes + ELEM * at_run);
      auto shift_of = [&](const T* pixel) {
        return static_cast<uint32_t>((reinterpret_cast<uintptr_t>(pixel) - ELEM * at_run) & 15);
      };
      w.at0 = at + shift_of(w.y);
      w.at1 = at + kRowBytes + shift_of(w.y + p.y_sc);
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      const int cc = nt * 8 + c0;
      const float2 b = *reinterpret_cast<const float2*>(chan + cc);
      float2 oc{};  // a per-channel `other`, read once
      if constexpr (kAnyChannel) oc = make_float2(other_at(0, cc), other_at(0, cc + 1));
      const bool in0 = kAnyChannel || full_n || pt.n0 + cc < p.Cout;
      const bool in1 = kAnyChannel || full_n || pt.n0 + cc + 1 < p.Cout;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        Row& w = rows[j];
        const float* a = acc[j >> 1] + nt * 4 + 2 * (j & 1);
        // (the ext stage's channels: their runs there)
        const uint32_t run = kExt && nt >= kSlotNT
                                 ? k.ext - stage.base + static_cast<uint32_t>((nt - kSlotNT) * 8 * kRowBytes)
                                 : static_cast<uint32_t>(nt * 8 * kRowBytes);
        if constexpr (kAnyChannel) {
          // values computed in every row (`other` is in shared memory), stores predicated
          // (& rather than &&: no branch)
          const float v0 = fused_value(a[0], b.x, oc.x), v1 = fused_value(a[1], b.y, oc.y);
          if (nt < kStagedNT) {  // channels past Cout staged too (write_rows skips them)
            if (w.ok) stage_value(w.at0 + run, v0);
            if (w.ok) stage_value(w.at1 + run, v1);
          } else {
            if (w.ok & (full_n | (pt.n0 + cc < p.Cout))) w.y[0] = from_float<T>(v0);
            if (w.ok & (full_n | (pt.n0 + cc + 1 < p.Cout))) w.y[p.y_sc] = from_float<T>(v1);
          }
        } else if (w.ok) {  // `other` read from global memory: only inside the output
          if (nt < kStagedNT) {
            if (in0) stage_value(w.at0 + run, fused_value(a[0], b.x, other_at(w.o, cc)));
            if (in1) stage_value(w.at1 + run, fused_value(a[1], b.y, other_at(w.o + p.o_sc, cc + 1)));
          } else {
            if (full_n || pt.n0 + cc < p.Cout) w.y[0] = from_float<T>(fused_value(a[0], b.x, other_at(w.o, cc)));
            if (full_n || pt.n0 + cc + 1 < p.Cout)
              w.y[p.y_sc] = from_float<T>(fused_value(a[1], b.y, other_at(w.o + p.o_sc, cc + 1)));
          }
        }
        w.y += 8 * p.y_sc;
        w.o += 8 * p.o_sc;
      }
    }
  };
  // One copy of the unrolled stores per kind of `other`, so that no element waits on a
  // branch before its load (and, per channel, one with paired stores). Channels-last
  // output is staged in boxes (stage_tile); ROWS output in channel runs at stage.base.
  auto store_tile = [&](const PatchTile& pt, int buf, auto stage) {
    const float* chan = chan_of(buf);
    auto strided = [&](auto tag) {
      const auto* o = static_cast<const decltype(tag)*>(p.other);
      return [=](int64_t off, int) { return static_cast<float>(to_float(__ldg(o + off))); };
    };
    // 16-bit NCHW output written directly: pairs of neighbouring pixels of a channel, one
    // store each, where the width stride is 1, the width even, the other strides even and
    // the output aligned to a pair (a pair is inside the output or outside it). fp32 NCHW
    // output keeps single stores: pixel pairs measured slower there (v22).
    constexpr bool kPairs = !CL && ELEM == 2 && !ROWS;
    const bool pixel_pairs = kPairs && p.y_sw == 1 && p.y_sc % 2 == 0 && p.y_sh % 2 == 0 &&
                             p.y_sn % 2 == 0 && reinterpret_cast<uintptr_t>(p.out) % (2 * ELEM) == 0 &&
                             p.OW % 2 == 0;
    const std::integral_constant<int, kStoreSingle> single;
    auto rows = [&](auto other_at, auto layout, auto any_channel) {
      if constexpr (CL) {
        store_rows(pt, chan, other_at, any_channel, std::integral_constant<int, kStageChannelPairs>{}, stage);
      } else if constexpr (ROWS && (PLANES || ELEM == 2)) {
        store_rows_pairwise(pt, chan, other_at, any_channel, std::integral_constant<int, kStageChannelRows>{}, stage);
      } else if constexpr (PLANES) {
        store_rows_pairwise(pt, chan, other_at, any_channel, single, stage);
      } else if constexpr (ROWS) {
        store_rows(pt, chan, other_at, any_channel, std::integral_constant<int, kStageChannelRows>{}, stage);
      } else {
        store_rows(pt, chan, other_at, any_channel, layout, stage);
      }
    };
    if (other_per_channel) {
      auto per_channel = [&](int64_t, int cc) { return chan[kPatchBN + cc]; };
      const std::true_type any;
      if (pixel_pairs) rows(per_channel, std::integral_constant<int, kPairs ? kStorePixelPairs : kStoreSingle>{}, any);
      else rows(per_channel, single, any);
    } else if (p.other_kind == kOtherF32) {
      rows(strided(float{}), single, std::false_type{});
    } else if (p.other_kind == kOtherF16) {
      rows(strided(__half{}), single, std::false_type{});
    } else if (p.other_kind == kOtherBF16) {
      rows(strided(__nv_bfloat16{}), single, std::false_type{});
    } else {
      rows([&](int64_t off, int) {
        return static_cast<float>(__ldg(static_cast<const double*>(p.other) + off));
      }, single, std::false_type{});
    }
  };

  // Channels-last output through the copy engine: the epilogue writes the tile's values
  // into the patch slot its last unit was read from (`slot`: both consumers are past it;
  // held until the copy engine has read them), as boxes of 128 bytes of channels x the 64
  // pixels of an m-half, 128B-swizzled (16-byte chunk j of pixel row R at chunk j ^ (R %
  // 8), which puts a store's lanes on distinct banks); then one thread per consumer stores
  // the boxes (k.y_map: pixels outside the output and channels past Cout are skipped).
  // fp32 tiles of 128 channels stage one m-half per round, 64 KB for both consumers; the
  // others both.
  auto stage_tile = [&](const PatchTile& pt, int buf, int slot) {
    const uint32_t base = (k.slots + static_cast<uint32_t>(slot) * kPatchSlotBytes + 1023u) & ~1023u;
    const uint32_t mine = base + static_cast<uint32_t>(c * (2 / kRounds) * kHalfBytes);
    auto round = [&](auto stage) {
      store_tile(pt, buf, stage);
      fence_proxy_async();  // the copy engine reads what these shared stores wrote
      named_sync(kBarConsumer + c, 128);
      if (ct == 0) {
        for (int h = stage.h0; h < stage.h1; ++h) {
          const int r0 = 128 * c + 64 * h;
          const int oh = pt.oh0 + r0 / p.tile_w, ow = pt.ow0 + r0 % p.tile_w;
          for (int q = 0; q < kBoxes; ++q)
            tensor_store_4d(k.y_map, mine + static_cast<uint32_t>((h - stage.h0) * kHalfBytes + q * kBoxBytes),
                            pt.n0 + q * kBoxCh, ow, oh, static_cast<int>(pt.n));
        }
        bulk_commit();
      }
    };
    if constexpr (kRounds == 2) {
      round(Stage<0, 1>{mine});
      if (ct == 0) bulk_wait_read();  // the first round has been read
      named_sync(kBarConsumer + c, 128);
      round(Stage<1, 2>{mine});
    } else {
      round(Stage<0, 2>{mine});
    }
  };

  // Every consumer thread arrives, after its own last read of the slot: the barrier's
  // phase then completes after every read, with no ordering left to the warp.
  auto release = [&](int b) { mbar_arrive(k.bar(b)); };
  // The slot a staged epilogue wrote (that of the tile's last unit): every thread but the
  // storing one releases it right after the epilogue; that one once the copy engine has
  // read it, after the next tile's first wgmmas are issued, where `cur` (the tile's first
  // unit) is in the other slot.
  auto release_staged = [&](const Slice& cur) {
    if (ct == 0) {
      bulk_wait_read();
      release(kBarPEmpty + (cur.slot ^ 1));
    }
  };
  RingPos ring;    // where the current slice's weights are
  int64_t u = 0;  // units finished

  // Slice s of the tile (reading `cur`): wait for its weights, multiply, and while the wgmma
  // runs release what the previous slice read and build the next slice's fragments.
  // Returns where the next slice reads.
  Frag frag[2];
  // `staged`: the tile before staged its output (release_staged).
  auto step = [&](int s, const PatchTile& pt, const Slice& cur, auto buf, bool staged) {
    constexpr int B = decltype(buf)::value;
    const Slice nxt = next_slice(cur);
    mbar_wait(k.bar(kBarWFull + static_cast<int>(ring.slot)), ring.parity);
    multiply(frag[B], ring.slot, s == 0);
    wgmma_wait<1>();  // the wgmma of the slice before is done: its slot is free
    if (s > 0) release(kBarWEmpty + ring.previous_slot());
    if (s == 0 && staged) release_staged(cur);
    if (nxt.tap == 0) {  // this slice ends its unit, whose last fragments were built before
      if (!(kStaged && s + 1 == k.S)) release(kBarPEmpty + cur.slot);  // staged: after the epilogue
      ++u;
    }
    if (s + 1 < k.S) {
      if (nxt.tap == 0) mbar_wait(k.bar(kBarPFull + nxt.slot), static_cast<uint32_t>(u >> 1) & 1u);
      build_a(nxt, pt.shift, frag[1 - B]);
    }
    ring.advance();
    return nxt;
  };

  // PLANES: slice s, its wgmmas reading the patch slot. A patch slot is released once the
  // wgmmas of its unit's last slice are done (here, a slice later; the tile's last unit
  // after the tile), and a unit's patch is awaited before its first slice.
  auto step_planes = [&](int s, const PatchTile& pt, const Slice& cur) {
    const Slice nxt = next_slice(cur);
    mbar_wait(k.bar(kBarWFull + static_cast<int>(ring.slot)), ring.parity);
    multiply_planes(cur, pt.shift, ring.slot, s == 0);
    wgmma_wait<1>();  // the slice before is done: its weight slot is free, and its patch slot
    if (s > 0) {      // where it ended a unit of this tile
      release(kBarWEmpty + ring.previous_slot());
      if (cur.tap == 0) release(kBarPEmpty + (cur.slot ^ 1));
    }
    if (nxt.tap == 0) ++u;
    if (s + 1 < k.S && nxt.tap == 0) mbar_wait(k.bar(kBarPFull + nxt.slot), static_cast<uint32_t>(u >> 1) & 1u);
    ring.advance();
    return nxt;
  };

  // 3xTF32: one k-step at a time. Its A fragments (8 registers, loaded a k-step ahead) are
  // split into big, small and finite big (split_tf32), which multiply the slice's weight
  // sets in three wgmmas per m-half: big x big, finite big x small, small x big (the
  // finite big where a weight is Inf or NaN). One commit group per k-step, and at most
  // two in flight, so that the 24 split registers of only two k-steps are live.
  using KFrag = uint32_t[2][4];
  auto load_kstep = [&](const Slice& s, int shift, int st, KFrag& a) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(k.patch) + s.slot * (kPatchSlotBytes / 4) +
                        s.off + shift + st * 8 * CH;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      a[h][0] = w[pix[h][0]];
      a[h][1] = w[pix[h][1]];
      a[h][2] = w[pix[h][0] + 4 * CH];
      a[h][3] = w[pix[h][1] + 4 * CH];
    }
  };
  RingPos held;     // the first weight slot of the slice whose wgmmas may still run
  int held_n = 0;  // and how many
  auto release_held = [&]() {
    for (int j = 0; j < held_n; ++j, held.advance()) release(kBarWEmpty + held.slot);
    held_n = 0;
  };
  // Slice s of the tile (reading `cur`, whose first k-step is in `raw`); returns the next.
  auto step_3x = [&](int s, const PatchTile& pt, const Slice& cur, KFrag& raw, bool staged) {
    const Slice nxt = next_slice(cur);
    const RingPos first = ring;
    uint32_t b[3];  // the sets' slots: big, small, then finite big (or big again)
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      if (j < k.sets) {
        mbar_wait(k.bar(kBarWFull + static_cast<int>(ring.slot)), ring.parity);
        b[j] = k.ring + ring.slot * kPatchSliceBytes<BN>;
        ring.advance();
      }
    }
    if (k.sets == 2) b[2] = b[0];
#pragma unroll
    for (int st = 0; st < NSTEP; ++st) {
      uint32_t big[2][4], small[2][4], fin[2][4];
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) split_tf32(raw[h][e], big[h][e], small[h][e], fin[h][e]);
      if (st + 1 < NSTEP) {
        load_kstep(cur, pt.shift, st + 1, raw);
      } else {
        if (nxt.tap == 0) {  // this slice ends its unit, whose fragments are all loaded
          if (!(kStaged && s + 1 == k.S)) release(kBarPEmpty + cur.slot);  // staged: after the epilogue
          ++u;
        }
        if (s + 1 < k.S) {
          if (nxt.tap == 0) mbar_wait(k.bar(kBarPFull + nxt.slot), static_cast<uint32_t>(u >> 1) & 1u);
          load_kstep(nxt, pt.shift, 0, raw);
        }
      }
      // (the compiler computes the small and finite parts just before their wgmmas, after
      // this fence: ptxas adds the fence they need there, C7519)
      wgmma_fence();
#pragma unroll
      for (int h = 0; h < 2; ++h)  // the tile's first k-step overwrites the accumulators
        wgmma_rs<WGMMA_MATH, BN>(acc[h], big[h], wgmma_desc(b[0] + st * 32), !(s == 0 && st == 0));
#pragma unroll
      for (int h = 0; h < 2; ++h) wgmma_rs<WGMMA_MATH, BN>(acc[h], fin[h], wgmma_desc(b[1] + st * 32), 1);
#pragma unroll
      for (int h = 0; h < 2; ++h) wgmma_rs<WGMMA_MATH, BN>(acc[h], small[h], wgmma_desc(b[2] + st * 32), 1);
      wgmma_commit();
      wgmma_wait<1>();                  // the k-step before is done
      if (st == 0) release_held();      // and with it the slice before
      if (s == 0 && st == 0 && staged) release_staged(cur);
    }
    held = first;
    held_n = k.sets;
    if (k.sets == 3) {  // three sets leave the ring one free slot: the next slice needs these
      wgmma_wait<0>();
      release_held();
    }
    return nxt;
  };

  PatchTile pt = patch_tile<VEC, CL, BN>(p, k.tile(0));
  Slice cur{0, 0, 0, 0, 0};
  KFrag raw;
  mbar_wait(k.bar(kBarPFull + 0), 0);
  if constexpr (MATH == Math::kF32x3) load_kstep(cur, pt.shift, 0, raw);
  else if constexpr (!PLANES) build_a(cur, pt.shift, frag[0]);
  for (int64_t i = 0; i < k.my_tiles; ++i) {
    load_channels(pt, static_cast<int>(i & 1));
    if constexpr (MATH == Math::kF32x3) {
      for (int s = 0; s < k.S; ++s) cur = step_3x(s, pt, cur, raw, CL && i > 0);
      wgmma_wait<0>();
      release_held();
    } else if constexpr (PLANES) {
      for (int s = 0; s < k.S; ++s) cur = step_planes(s, pt, cur);
      wgmma_wait<0>();
      release(kBarWEmpty + ring.previous_slot());
      if constexpr (!kStaged) release(kBarPEmpty + (cur.slot ^ 1));  // the tile's last unit
    } else {
      int s = 0;
      for (; s + 1 < k.S; s += 2) {
        cur = step(s, pt, cur, std::integral_constant<int, 0>{}, CL && i > 0);
        cur = step(s + 1, pt, cur, std::integral_constant<int, 1>{}, false);
      }
      if (s < k.S) cur = step(s, pt, cur, std::integral_constant<int, 0>{}, false);
      wgmma_wait<0>();
      release(kBarWEmpty + ring.previous_slot());
    }
    if constexpr (kStaged) {
      // Both consumers are past the slot of the tile's last unit (cur walked past it), each
      // one's bias and `other` are written, and (16-bit) the ext stage's copies of the tile
      // before have been read.
      const int slot = cur.slot ^ 1;
      if constexpr (kExt) bulk_wait_read();
      named_sync(kBarConsumers, 256);
      if constexpr (CL) {
        stage_tile(pt, static_cast<int>(i & 1), slot);
        if (ct != 0) release(kBarPEmpty + slot);
      } else {  // the producer's patch warps write the slot's staged runs out
        const uint32_t base = k.slots + static_cast<uint32_t>(slot) * kPatchSlotBytes;
        store_tile(pt, static_cast<int>(i & 1), Stage<0, 2>{base});
        fence_proxy_async();  // the copy engine reads what these shared stores wrote
        release(kBarPEmpty + slot);
        if constexpr (kExt) {  // the ext stage's runs, once both consumers have staged them,
          // by the second (its channel j by lane j / 4 of warp j % 4), while the first goes
          // on (it takes write_runs with no channel of its own: a branch around the call
          // spilled in the consumers' mainloop)
          if (c == 0) named_arrive(kBarExtStaged, kPatchConsumerThreads);
          else named_sync(kBarExtStaged, kPatchConsumerThreads);
          write_runs<ELEM>(p, pt, slot_staged_channels(ELEM), staged_channels(ELEM), k.ext,
                           c == 0 ? kPatchBN : lane * 4 + wq, kPatchConsumerThreads / 2);
        }
      }
    } else {
      named_sync(kBarConsumer + c, 128);  // this consumer's bias and `other` are written
      store_tile(pt, static_cast<int>(i & 1), Stage<0, 2>{0});
    }
    if (i + 1 < k.my_tiles) {
      // The next tile's first unit: cur walked past the last slice into (cb = cblocks,
      // slot of the next unit).
      pt = patch_tile<VEC, CL, BN>(p, k.tile(i + 1));
      cur = Slice{0, 0, 0, 0, cur.slot};
      mbar_wait(k.bar(kBarPFull + cur.slot), static_cast<uint32_t>(u >> 1) & 1u);
      if constexpr (MATH == Math::kF32x3) load_kstep(cur, pt.shift, 0, raw);
      else if constexpr (!PLANES) build_a(cur, pt.shift, frag[0]);
    }
  }
  if ((CL && ct == 0) || kExt) bulk_wait();  // the last tile's stores are done
#endif
}

template <Math MATH, bool CL, int BN, bool ROWS, bool PLANES>
__global__ void __launch_bounds__(kPatchThreads, 1)
    conv_relu_add_patch_kernel(const ConvParams p, const __grid_constant__ CUtensorMap x_map,
                               const __grid_constant__ CUtensorMap y_map) {
#ifdef FX_FUSE_WGMMA
  extern __shared__ __align__(1024) unsigned char smem[];
  if ((smem_u32(smem) & 1023u) != 0) __trap();  // the 128B swizzle is a function of the address
  constexpr int ELEM = sizeof(typename MathTraits<MATH>::T);
  PatchCta k;
  constexpr int kRingBytes = kPatchBStages * kPatchSliceBytes<BN>;
  constexpr int kExtBytes = patch_ext_bytes<MATH, ROWS>();
  k.patch = smem + kRingBytes;
  k.ring = smem_u32(smem);
  k.slots = k.ring + kRingBytes;
  k.ext = k.slots + kPatchSlots * kPatchSlotBytes;
  k.chan = reinterpret_cast<float*>(smem + kRingBytes + kPatchSlots * kPatchSlotBytes + kExtBytes);
  k.x_map = &x_map;
  k.y_map = &y_map;
  k.bars = k.ext + kExtBytes + kPatchChanBytes;
  const uint32_t tiles = p.patch_tile_count;
  if (blockIdx.x >= tiles) return;
  k.my_tiles = static_cast<int>((tiles - blockIdx.x + gridDim.x - 1) / gridDim.x);
  k.S = p.cblocks * p.taps;
  k.sets = MATH == Math::kF32x3 ? (*p.w_nonfinite != 0 ? 3 : 2) : 1;
  k.row_step = CL ? p.patch_pitch * (kPatchPixelBytes / ELEM) : p.patch_pitch;
  k.chan_step = dense_patch_rows(ROWS, PLANES, ELEM) ? p.patch_rows * p.patch_pitch : kPatchChannelPitch;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kPatchBStages; ++s) {
      mbar_init(k.bar(kBarWFull + s), 1);
      mbar_init(k.bar(kBarWEmpty + s), kPatchConsumerThreads);
    }
    for (int s = 0; s < kPatchSlots; ++s) {
      mbar_init(k.bar(kBarPLanded + s), kPatchCopyThreads);
      mbar_init(k.bar(kBarPFull + s), kPatchCopyThreads);
      mbar_init(k.bar(kBarPEmpty + s), kPatchConsumerThreads);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (threadIdx.x < kPatchProducerThreads) {
    setmaxnreg_dec<kPatchProducerRegs<PLANES>>();
    if (threadIdx.x == 0) patch_produce_weights<MATH, BN>(p, k);
    else if (threadIdx.x >= 32) patch_produce_patches<MATH, CL, BN, ROWS, PLANES>(p, k);
  } else {
    setmaxnreg_inc<kPatchConsumerRegs<PLANES>>();
    patch_consume<MATH, CL, BN, ROWS, PLANES>(p, k, (threadIdx.x - kPatchProducerThreads) / 128);
  }
#else
  __trap();  // never launched: the host picks this kernel only where sm_90a code exists
#endif
}

}  // namespace fx_fuse
