// Device templates of the fused conv2d -> +bias -> relu -> +other kernel.
//
// Implicit GEMM on the tensor cores: wgmma on Hopper (sm_90a, 128x128 tiles of TF32, fp16,
// bf16), mma.sync everywhere else (sm_80 and later) and for 3xTF32:
//   M = N * OH * OW (output pixels), N = Cout, K = Cin * KH * KW.
// A (pixels x K) is gathered from the input on the fly through a K-table (one entry per k:
// the element's offset from the pixel's base and its (dh, dw) shift for the bounds check),
// so any stride / padding / dilation / layout works without an im2col buffer.
// B (Cout x K) comes from a small prepared copy of the weights ([Cout_pad][K_pad], in the
// same K order, zero padded, TF32-rounded when TF32 is on), read with cp.async.
// The epilogue adds the bias, applies relu (NaN propagates as in torch.relu), adds
// `other` (any broadcast, given by strides, or a scalar) and stores the output once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "params.h"

namespace fx_fuse {

template <Math M> struct MathTraits;
template <> struct MathTraits<Math::kTF32> { using T = float; };
template <> struct MathTraits<Math::kF32x3> { using T = float; };
template <> struct MathTraits<Math::kF16> { using T = __half; };
template <> struct MathTraits<Math::kBF16> { using T = __nv_bfloat16; };

// Calls f(ElemType<T>{}) with T the element type that elem_bytes and bf16 name (float,
// __nv_bfloat16 or __half): the one dtype dispatch of the launchers.
template <typename T> struct ElemType { using type = T; };
template <typename F> void dispatch_elem(int elem_bytes, bool bf16, F&& f) {
  if (elem_bytes == 4) f(ElemType<float>{});
  else if (bf16) f(ElemType<__nv_bfloat16>{});
  else f(ElemType<__half>{});
}


// Per-CTA information about one output pixel (one row of the A tile).
struct RowInfo {
  int64_t x_img;  // n * x_sn: the pixel's image
  int64_t y_off;  // n * y_sn + oh * y_sh + ow * y_sw
  int64_t o_off;  // n * o_sn + oh * o_sh + ow * o_sw
  int x_pix;      // ih0 * x_sh + iw0 * x_sw: the window's origin inside the image (32-bit)
  int ih0, iw0;   // top-left input coordinate; far negative for rows past M
  int interior;   // the whole window lies inside the image: no tap needs a bounds check
};


__device__ __forceinline__ uint32_t f32_to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 3xTF32: x = big + small, both TF32 (small = 0 for Inf / NaN, whose rest is NaN), and
// fin = big where x is finite, else 0. The product is small_a * fin_b + fin_a * small_b +
// big_a * big_b: for finite operands the usual 3xTF32 terms; an Inf operand meets only
// big * big (Inf with the right sign, as in eager) and never 0 * Inf or an Inf of the
// other sign from the correction terms.
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& big, uint32_t& small,
                                           uint32_t& fin) {
  const float f = __uint_as_float(x);
  big = f32_to_tf32(f);
  const float rest = f - __uint_as_float(big);
  const bool finite = fabsf(f) < INFINITY;
  small = finite ? f32_to_tf32(rest) : 0u;
  fin = finite ? big : 0u;
}

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Calls f with a null pointer to `other`'s element type (const void* where `other` is a
// number), so that a loop over many outputs can test the kind once (other_tag_t, other_at).
template <typename F>
__device__ __forceinline__ decltype(auto) with_other_type(const ConvParams& p, F&& f) {
  switch (p.other_kind) {
    case kOtherF32: return f(static_cast<const float*>(nullptr));
    case kOtherF16: return f(static_cast<const __half*>(nullptr));
    case kOtherBF16: return f(static_cast<const __nv_bfloat16*>(nullptr));
    case kOtherF64: return f(static_cast<const double*>(nullptr));
    default: return f(static_cast<const void*>(nullptr));
  }
}

// The element type that with_other_type's pointer `Tag` points to.
template <typename Tag>
using other_tag_t = std::remove_const_t<std::remove_pointer_t<Tag>>;

// `other` of element type O at element offset `off`, or the number (O = void). Plain
// loads: __ldg is inline asm without side effects, which the compiler may hoist above the
// kind's test and so read through a null `other`.
template <typename O>
__device__ __forceinline__ float other_at(const ConvParams& p, int64_t off) {
  if constexpr (std::is_void_v<O>) {
    return p.other_scalar;
  } else if constexpr (std::is_same_v<O, float> || std::is_same_v<O, double>) {
    return static_cast<float>(static_cast<const O*>(p.other)[off]);
  } else {
    return to_float(static_cast<const O*>(p.other)[off]);
  }
}

// `other` at element offset `off`, or the number.
__device__ __forceinline__ float load_other(const ConvParams& p, int64_t off) {
  return with_other_type(p, [&](auto tag) { return other_at<other_tag_t<decltype(tag)>>(p, off); });
}

// The bias of output channel c as a float (0 without a bias).
template <typename T>
__device__ __forceinline__ float channel_bias(const ConvParams& p, int c) {
  return p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
}

// relu(acc + bias) + other: NaN propagates (only v < 0 becomes 0, as in torch.relu), by
// max.NaN (sm_80): one instruction where a compare and a select would be two.
__device__ __forceinline__ float fused_value(float acc, float bias, float other) {
  float r;
  asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(r) : "f"(acc + bias));
  return r + other;
}

// Predicated loads through the read-only path, 0 where the predicate is false (no branch,
// so the compiler batches a thread's gathers and their latencies overlap).
template <int BYTES> __device__ __forceinline__ uint32_t ldg_pred(const void* ptr, bool pred);
template <> __device__ __forceinline__ uint32_t ldg_pred<4>(const void* ptr, bool pred) {
  uint32_t v;
  asm("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n mov.b32 %0, 0;\n"
      " @p ld.global.nc.b32 %0, [%1];\n}\n"
      : "=r"(v) : "l"(ptr), "r"(static_cast<int>(pred)));
  return v;
}
template <> __device__ __forceinline__ uint32_t ldg_pred<2>(const void* ptr, bool pred) {
  unsigned short v;
  asm("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n mov.b16 %0, 0;\n"
      " @p ld.global.nc.b16 %0, [%1];\n}\n"
      : "=h"(v) : "l"(ptr), "r"(static_cast<int>(pred)));
  return v;
}
// The element's bits through the read-only path, unpredicated.
template <typename T> __device__ __forceinline__ uint32_t ldg_bits(const T* ptr) {
  if constexpr (sizeof(T) == 4) {
    return __ldg(reinterpret_cast<const unsigned int*>(ptr));
  } else {
    return __ldg(reinterpret_cast<const unsigned short*>(ptr));
  }
}
__device__ __forceinline__ uint4 ldg_pred_v4(const void* ptr, bool pred) {
  uint4 v;
  asm("{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n"
      " mov.b32 %2, 0;\n mov.b32 %3, 0;\n @p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(ptr), "r"(static_cast<int>(pred)));
  return v;
}


// Hopper (sm_90a): wgmma reads A and B straight from the shared-memory ring. A ring slot is
// K-major with 128-byte rows whose 16-byte chunk c sits at c ^ (row & 7): the canonical
// 128B-swizzle layout (8-row atoms of 1024 bytes), so a descriptor is its address, a
// stride of 1024 bytes between 8-row groups and the swizzle mode; a k-step advances the
// address by 32 bytes inside the rows.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FX_FUSE_WGMMA 1
#endif

__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_addr) {
  uint64_t d = (smem_addr & 0x3FFFFu) >> 4;  // start address
  d |= uint64_t{1} << 16;                     // leading byte offset: unused with swizzle
  d |= uint64_t{1024 >> 4} << 32;             // stride byte offset: 8 rows x 128 bytes
  d |= uint64_t{1} << 62;                     // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef FX_FUSE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef FX_FUSE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Wait until at most N committed wgmma groups of this warpgroup are pending.
template <int N> __device__ __forceinline__ void wgmma_wait() {
#ifdef FX_FUSE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Orders this thread's shared-memory writes (ordinary stores, cp.async) before the async
// proxy's next access to the same bytes: a wgmma's read, a bulk copy's write.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef FX_FUSE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// The 64 fp32 accumulator registers of an m64n128 wgmma: the asm operand list (%0-%63)
// and its constraints.
#define FX_FUSE_D64_LIST                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}"
#define FX_FUSE_D64(d)                                                                           \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),       \
  "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),     \
  "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),     \
  "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),     \
  "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),     \
  "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),     \
  "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),     \
  "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// D (64 x 128, fp32, this warpgroup's fragment) += A (64 x k) * B (128 x k)^T, both K-major
// in shared memory; k = 8 for TF32, 16 for fp16 / bf16 (32 bytes either way).
template <Math MATH>
__device__ __forceinline__ void wgmma_m64n128(float (&d)[64], uint64_t a, uint64_t b) {
#ifdef FX_FUSE_WGMMA
  if constexpr (MATH == Math::kTF32) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " FX_FUSE_D64_LIST
                 ", %64, %65, p, 1, 1;\n}\n"
                 : FX_FUSE_D64(d)
                 : "l"(a), "l"(b), "r"(1));
  } else if constexpr (MATH == Math::kF16) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FX_FUSE_D64_LIST
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : FX_FUSE_D64(d)
                 : "l"(a), "l"(b), "r"(1));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FX_FUSE_D64_LIST
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : FX_FUSE_D64(d)
                 : "l"(a), "l"(b), "r"(1));
  }
#else
  __trap();  // never launched: the host picks this path only for sm_90a code
#endif
}

// Pipeline depth of the shared-memory ring (A and B slices).
constexpr int kStages = 3;

// Tile rows are 128 bytes (one K slice); 16-byte chunk c of row r sits at chunk
// c ^ (r & 7), so that ldmatrix (8 rows x 16 B) and 16-byte stores of 8 consecutive rows
// hit 8 distinct bank groups without padding.
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * kSliceBytes + ((chunk ^ (row & 7)) << 4);
}

// Shared memory of one CTA, in bytes, without the K-table (K_pad * 8 more when it fits).
template <int BM, int BN>
constexpr int conv_smem_bytes() {
  return kStages * (BM + BN) * kSliceBytes + BM * static_cast<int>(sizeof(RowInfo));
}

__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(pred ? 16 : 0));
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// MATH: the tensor-core arithmetic; AVEC: the A gather reads 16-byte vectors of channels
// (channels-last input, C % VEC == 0, aligned), otherwise one element at a time.
// BM x BN: the CTA tile; WM x WN: its warps. WGMMA (sm_90a, 128x128 tiles, 8 x 1 warps):
// two warpgroups multiply with wgmma, warp w owning rows 16w..16w+15 of the tile, which is
// the mma.sync accumulator layout of a 16 x 128 warp tile, so the epilogue is shared.
//
// Pipeline: a ring of kStages slices; B (prepared weights) and channels-last A chunks
// arrive by cp.async (A zero-filled where the tap is padding), kStages - 1 slices in
// flight while one is multiplied; the gathering thread rounds its own fp32 A chunks to TF32
// in place before the slice's barrier. Element-wise gathers (NCHW, odd C) go through
// registers one slice ahead, rounded while staged.
template <Math MATH, bool AVEC, int BM, int BN, int WM, int WN, int MINB, bool WGMMA = false>
__global__ void __launch_bounds__(WM * WN * 32, MINB) conv_relu_add_kernel(const ConvParams p) {
  using T = typename MathTraits<MATH>::T;
  constexpr int THREADS = WM * WN * 32;
  constexpr int VEC = 16 / sizeof(T);        // elements per 16-byte chunk
  constexpr int BK = kSliceBytes / sizeof(T);  // K per slice
  constexpr int CHUNKS = kSliceBytes / 16;   // 16-byte chunks per row slice (8)
  constexpr int WTM = BM / WM, WTN = BN / WN;
  constexpr int MT = WTM / 16, NT = WTN / 8;
  constexpr int NA = BM * CHUNKS / THREADS;  // A chunks per thread per slice
  constexpr int NB = BN * CHUNKS / THREADS;  // B chunks per thread per slice
  // Element-wise gathers go through registers one slice ahead (4-byte cp.async per element
  // measured slower: 3.98 vs 3.16 ms at the headline); channels-last 16-byte chunks by
  // cp.async, except for TF32 wgmma, where registers let the rounding happen at the store
  // instead of in a second pass over shared memory.
  constexpr bool kRegA = !AVEC || (WGMMA && MATH == Math::kTF32);
  // A staged chunk in registers: 4 words (fp32 elements or a 16-byte vector), or 8 16-bit
  // elements one per word, packed only when stored (packing right after the loads would
  // make the warp wait for them before it issues the slice's wgmma).
  constexpr int kWords = AVEC ? 4 : VEC;
  static_assert(THREADS % BM == 0 || AVEC, "scalar gather: one pixel per thread");
  static_assert(NA * THREADS == BM * CHUNKS && NB * THREADS == BN * CHUNKS, "tile/threads");
  static_assert(NT % 2 == 0 && WTM % 16 == 0, "warp tile");
  static_assert(!WGMMA || (BM == 128 && BN == 128 && WM == 8 && WN == 1 &&
                           MATH != Math::kF32x3), "wgmma tiling");

  // 1024-byte alignment: the 128B swizzle of wgmma is a function of the address.
  extern __shared__ __align__(1024) unsigned char smem[];
  if constexpr (WGMMA) {
    if ((smem_u32(smem) & 1023u) != 0) __trap();  // a launch error, never wrong numbers
  }
  unsigned char* sA = smem;
  unsigned char* sB = smem + kStages * BM * kSliceBytes;
  RowInfo* rows = reinterpret_cast<RowInfo*>(sB + kStages * BN * kSliceBytes);
  int2* s_table = reinterpret_cast<int2*>(rows + BM);

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / WN, warp_n = warp % WN;
  const int n_tiles = (p.Cout + BN - 1) / BN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / n_tiles) * BM;
  const int n0 = static_cast<int>(blockIdx.x % n_tiles) * BN;

  for (int r = tid; r < BM; r += THREADS) {
    const int64_t m = m0 + r;
    RowInfo ri;
    if (m < p.M) {
      const int64_t plane = static_cast<int64_t>(p.OH) * p.OW;
      const int64_t n = m / plane;
      const int rem = static_cast<int>(m - n * plane);
      const int oh = rem / p.OW, ow = rem - (rem / p.OW) * p.OW;
      ri.ih0 = oh * p.stride_h - p.pad_h;
      ri.iw0 = ow * p.stride_w - p.pad_w;
      ri.x_img = n * p.x_sn;
      ri.x_pix = static_cast<int>(ri.ih0 * p.x_sh + ri.iw0 * p.x_sw);
      ri.y_off = n * p.y_sn + oh * p.y_sh + ow * p.y_sw;
      ri.o_off = n * p.o_sn + oh * p.o_sh + ow * p.o_sw;
    } else {
      ri.ih0 = ri.iw0 = -(1 << 30);
      ri.x_img = ri.y_off = ri.o_off = 0;
      ri.x_pix = 0;
    }
    ri.interior = m < p.M && ri.ih0 >= 0 && ri.iw0 >= 0 && ri.ih0 + p.span_h <= p.H &&
                  ri.iw0 + p.span_w <= p.W;
    rows[r] = ri;
  }
  // The K-table: in shared memory when small (LDS instead of a dependent global load in
  // front of every gather), else read from global memory. A generic pointer to the table
  // costs the 128x128 kernels registers they lack: they require the shared copy.
  constexpr bool kSmemTableOnly = BN == 128;
  const bool table_in_smem = kSmemTableOnly || p.K_pad <= kSmemTableEntries;
  if (table_in_smem) {
    for (int k = tid; k < p.K_pad; k += THREADS) s_table[k] = p.table[k];
  }
  const int2* table = (kSmemTableOnly || table_in_smem) ? s_table : p.table;
  __syncthreads();

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ wp = static_cast<const T*>(p.wprep);
  const unsigned H = static_cast<unsigned>(p.H), W = static_cast<unsigned>(p.W);

  // Which A chunks this thread gathers: AVEC: rows tid / 8 + j * THREADS / 8, chunk tid % 8
  // (8 lanes read one pixel's 128 contiguous bytes); element-wise: one pixel (row
  // tid % BM, so a warp reads 32 neighbouring pixels), chunks kv0 + j * KVSTEP.
  constexpr int KVSTEP = AVEC ? 1 : THREADS / BM;
  const int my_row = AVEC ? 0 : tid % BM;
  const int kv0 = AVEC ? tid % CHUNKS : tid / BM;
  auto a_row = [&](int j) { return AVEC ? tid / CHUNKS + j * (THREADS / CHUNKS) : my_row; };
  auto a_chunk = [&](int j) { return AVEC ? kv0 : kv0 + j * KVSTEP; };

  uint32_t stage[kRegA ? NA : 1][kWords];

  // Issue the gather of A's slice at k0 (into ring buffer buf, or registers for kRegA).
  auto issue_a = [&](int k0, int buf) {
    if constexpr (AVEC) {
      const uint32_t base = smem_u32(sA + buf * BM * kSliceBytes);
      const int k = k0 + kv0 * VEC;
      const int2 t = table[k];
      const int dh = t.y >> 16, dw = t.y & 0xffff;
      const bool kok = k < p.K;
#pragma unroll
      for (int j = 0; j < NA; ++j) {
        const RowInfo& ri = rows[a_row(j)];
        const bool ok = kok && static_cast<unsigned>(ri.ih0 + dh) < H &&
                        static_cast<unsigned>(ri.iw0 + dw) < W;
        const T* src = ok ? x + ri.x_img + (ri.x_pix + t.x) : x;
        if constexpr (kRegA) {
          const uint4 q = ldg_pred_v4(src, ok);
          stage[j][0] = q.x;
          stage[j][1] = q.y;
          stage[j][2] = q.z;
          stage[j][3] = q.w;
        } else {
          cp_async_16_zfill(base + swizzle(a_row(j), kv0), src, ok);
        }
      }
    } else {
      // The pixel's data is re-read from shared memory on every slice rather than kept in
      // registers across the MMAs (128-register budget at two CTAs per SM).
      const int my_ih0 = rows[my_row].ih0, my_iw0 = rows[my_row].iw0;
      // One 64-bit base per pixel, so that each tap's address is a single wide multiply-add
      // of its 32-bit table offset (it was six instructions with the sum formed per tap).
      const T* my_base = x + rows[my_row].x_img + rows[my_row].x_pix;
      // Pixels whose whole window lies inside the image (all of them at padding 0) skip the
      // per-tap bounds checks, and in a full slice the loads need no predicate at all: the
      // checks were most of the gather's instructions (2.46 -> 2.14 ms at the headline).
      auto gather = [&](auto checked) {
#pragma unroll
        for (int j = 0; j < NA; ++j) {
          const int kb = k0 + a_chunk(j) * VEC;
          uint32_t(&v)[kWords] = stage[j];
#pragma unroll
          for (int e = 0; e < VEC; e += 2) {
            const int4 t2 = *reinterpret_cast<const int4*>(table + kb + e);  // two entries
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int off = h ? t2.z : t2.x, dhw = h ? t2.w : t2.y;
              const T* src = my_base + off;
              if constexpr (decltype(checked)::value) {
                const bool ok = (kb + e + h) < p.K &&
                                static_cast<unsigned>(my_ih0 + (dhw >> 16)) < H &&
                                static_cast<unsigned>(my_iw0 + (dhw & 0xffff)) < W;
                v[e + h] = ldg_pred<sizeof(T)>(src, ok);
              } else {
                v[e + h] = ldg_bits(src);
              }
            }
          }
        }
      };
      if (rows[my_row].interior && k0 + BK <= p.K) {
        gather(std::false_type{});
      } else {
        gather(std::true_type{});
      }
    }
  };

  // After the slice's cp.async group landed: store the register-staged chunks (kRegA), or
  // round this thread's own fp32 A chunks to TF32 in place (kTF32).
  auto finish_a = [&](int buf) {
    unsigned char* base = sA + buf * BM * kSliceBytes;
    if constexpr (kRegA) {
#pragma unroll
      for (int j = 0; j < NA; ++j) {
        const uint32_t* w = stage[j];
        uint4 v;
        if constexpr (kWords == 8) {
          v = make_uint4(w[0] | (w[1] << 16), w[2] | (w[3] << 16), w[4] | (w[5] << 16),
                         w[6] | (w[7] << 16));
        } else if constexpr (MATH == Math::kTF32) {
          // Rounded here, not when loaded (see kWords).
          v = make_uint4(f32_to_tf32(__uint_as_float(w[0])), f32_to_tf32(__uint_as_float(w[1])),
                         f32_to_tf32(__uint_as_float(w[2])), f32_to_tf32(__uint_as_float(w[3])));
        } else {
          v = make_uint4(w[0], w[1], w[2], w[3]);
        }
        *reinterpret_cast<uint4*>(base + swizzle(a_row(j), a_chunk(j))) = v;
      }
    } else if constexpr (MATH == Math::kTF32) {
#pragma unroll
      for (int j = 0; j < NA; ++j) {
        uint4* q = reinterpret_cast<uint4*>(base + swizzle(a_row(j), a_chunk(j)));
        uint4 v = *q;
        v.x = f32_to_tf32(__uint_as_float(v.x));
        v.y = f32_to_tf32(__uint_as_float(v.y));
        v.z = f32_to_tf32(__uint_as_float(v.z));
        v.w = f32_to_tf32(__uint_as_float(v.w));
        *q = v;
      }
    }
  };

  auto issue_b = [&](int k0, int buf) {
    const uint32_t base = smem_u32(sB + buf * BN * kSliceBytes);
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const int c = tid + j * THREADS;
      const int row = c / CHUNKS, kc = c % CHUNKS;
      cp_async_16(base + swizzle(row, kc),
                  wp + static_cast<int64_t>(n0 + row) * p.K_pad + k0 + kc * VEC);
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // ldmatrix lane addresses. A: matrices (rows 0-7 | 8-15) x (k bytes 0-15 | 16-31) ->
  // a0..a3; B: (k 0-15 | 16-31) x (n 0-7 | 8-15) -> b0, b1 of two n-tiles. Every row
  // address has row & 7 == lane & 7, which is the swizzle's key.
  const int sw = lane & 7;
  const int a_row0 = (warp_m * WTM + (lane & 7) + ((lane >> 3) & 1) * 8) * kSliceBytes;
  const int a_hi = lane >> 4;
  const int b_row0 = (warp_n * WTN + (lane & 7) + (lane >> 4) * 8) * kSliceBytes;
  const int b_hi = (lane >> 3) & 1;

  auto compute = [&](int buf) {
    if constexpr (WGMMA) {
      float(&d)[64] = *reinterpret_cast<float(*)[64]>(&acc[0][0][0]);
      const uint32_t a_tile = smem_u32(sA + buf * BM * kSliceBytes) + (warp / 4) * 64 * kSliceBytes;
      const uint32_t b_tile = smem_u32(sB + buf * BN * kSliceBytes);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kSliceBytes / 32; ++kk)
        wgmma_m64n128<MATH>(d, wgmma_desc(a_tile + kk * 32), wgmma_desc(b_tile + kk * 32));
      wgmma_commit();  // waited for before the ring slot is refilled (main loop)
      return;
    }
    const uint32_t a_base = smem_u32(sA + buf * BM * kSliceBytes) + a_row0;
    const uint32_t b_base = smem_u32(sB + buf * BN * kSliceBytes) + b_row0;
    // 3xTF32 keeps one k-step's split operands live at a time (unrolled, the compiler
    // hoists all four and spills).
#pragma unroll(MATH == Math::kF32x3 ? 1 : 4)
    for (int kk = 0; kk < kSliceBytes / 32; ++kk) {
      const uint32_t a_col = ((2 * kk + a_hi) ^ sw) << 4;
      const uint32_t b_col = ((2 * kk + b_hi) ^ sw) << 4;
      uint32_t b[NT][2];
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, b_base + np * 16 * kSliceBytes + b_col);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
      }
      // 3xTF32: split each operand once per k-step (B here, A per m-tile below).
      uint32_t bs[NT][2], bf[NT][2];
      if constexpr (MATH == Math::kF32x3) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) split_tf32(b[nt][e], b[nt][e], bs[nt][e], bf[nt][e]);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t a[4];
        ldmatrix_x4(a, a_base + mt * 16 * kSliceBytes + a_col);
        if constexpr (MATH == Math::kF32x3) {
          uint32_t as[4], af[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) split_tf32(a[e], a[e], as[e], af[e]);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            mma_tf32(acc[mt][nt], as, bf[nt][0], bf[nt][1]);
            mma_tf32(acc[mt][nt], af, bs[nt][0], bs[nt][1]);
            mma_tf32(acc[mt][nt], a, b[nt][0], b[nt][1]);
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            if constexpr (MATH == Math::kTF32) {
              mma_tf32(acc[mt][nt], a, b[nt][0], b[nt][1]);
            } else if constexpr (MATH == Math::kF16) {
              mma_f16(acc[mt][nt], a, b[nt][0], b[nt][1]);
            } else {
              mma_bf16(acc[mt][nt], a, b[nt][0], b[nt][1]);
            }
          }
        }
      }
    }
  };

  // Main loop. One cp.async group per slice (empty past the end, so that the wait count
  // stays uniform); one barrier per slice.
  const int KT = p.K_pad / BK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) {
      issue_b(s * BK, s);
      if constexpr (!kRegA) issue_a(s * BK, s);
    }
    cp_async_commit();
  }
  if constexpr (kRegA) issue_a(0, 0);
  for (int kt = 0; kt < KT; ++kt) {
    const int cur = kt % kStages;
    cp_async_wait<kStages - 2>();
    finish_a(cur);
    if constexpr (WGMMA) {
      fence_proxy_async();
      // The previous slice's wgmma ran while this slice was staged; it must be done (in
      // both warpgroups, hence before the barrier) before its ring slot is refilled below.
      wgmma_wait<0>();
    }
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < KT) {
      issue_b(next * BK, next % kStages);
      if constexpr (!kRegA) issue_a(next * BK, next % kStages);
    }
    cp_async_commit();
    if constexpr (kRegA) {
      if (kt + 1 < KT) issue_a((kt + 1) * BK, 0);
    }
    compute(cur);
  }
  cp_async_wait<0>();
  if constexpr (WGMMA) wgmma_wait<0>();

  // Epilogue: + bias, relu (NaN stays NaN: only v < 0 becomes 0), + other, one store.
  const int g = lane >> 2, tq = lane & 3;
  T* __restrict__ out = static_cast<T*>(p.out);
  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  // Bias, and `other` that does not vary along pixels (per-channel, 0-dim, scalar), read
  // once per channel of the tile into shared memory (the ring is free now): kept in
  // registers they would cost the 16 x 128 wgmma warp tile 64 registers and spill.
  const bool other_per_channel = p.o_sn == 0 && p.o_sh == 0 && p.o_sw == 0;
  __syncthreads();  // every warp is done reading the ring
  float* s_bias = reinterpret_cast<float*>(sA);
  float* s_other = s_bias + BN;
  for (int c = tid; c < BN; c += THREADS) {
    const int co = n0 + c;
    s_bias[c] = (bias != nullptr && co < p.Cout) ? to_float(bias[co]) : 0.f;
    s_other[c] = (other_per_channel && co < p.Cout) ? load_other(p, co * p.o_sc) : 0.f;
  }
  __syncthreads();
  auto store_tile = [&](auto per_channel) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = warp_m * WTM + mt * 16 + g + 8 * h;
        if (m0 + r >= p.M) continue;
        T* __restrict__ y_row = out + rows[r].y_off;
        const int64_t o_off = rows[r].o_off;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = warp_n * WTN + nt * 8 + 2 * tq + e;
            const int co = n0 + c;
            if (co >= p.Cout) continue;
            const float other = decltype(per_channel)::value ? s_other[c]
                                                             : load_other(p, o_off + co * p.o_sc);
            y_row[co * p.y_sc] = from_float<T>(fused_value(acc[mt][nt][2 * h + e], s_bias[c], other));
          }
      }
  };
  if (other_per_channel) {
    store_tile(std::true_type{});
  } else {
    store_tile(std::false_type{});
  }
}

// Weight preparation and the K-table (PrepParams in params.h).
__device__ __forceinline__ void decompose_k(const PrepParams& p, int k, int& c, int& kh,
                                            int& kw) {
  if (p.k_order == kOrderHWC) {
    c = k % p.Cin;
    const int r = k / p.Cin;
    kw = r % p.KW;
    kh = r / p.KW;
  } else if (p.k_order == kOrderBlocked) {
    const int r = k / p.k_block;
    const int tap = r % (p.KH * p.KW);
    c = r / (p.KH * p.KW) * p.k_block + k % p.k_block;
    kh = tap / p.KW;
    kw = tap % p.KW;
  } else {
    kw = k % p.KW;
    const int r = k / p.KW;
    kh = r % p.KH;
    c = r / p.KH;
  }
}

// Where the patch kernel's weights go: slice by slice ([Cout_pad / n_block][K_pad /
// k_block][sets][n_block][k_block]; 3xTF32: three sets, else one), each 128-byte row's
// 16-byte chunk c already at c ^ (row & 7) (the 128B swizzle of a ring slot), so that one
// bulk copy moves a set of a slice as wgmma reads it.
template <typename T>
__device__ __forceinline__ int64_t blocked_index(const PrepParams& p, int co, int k, int set) {
  constexpr int VEC = 16 / sizeof(T);
  const int slice = k / p.k_block, e = k % p.k_block, row = co % p.n_block;
  const int at = ((e / VEC) ^ (row & 7)) * VEC + e % VEC;
  const int sets = p.tf32_split ? 3 : 1;
  return (((static_cast<int64_t>(co / p.n_block) * (p.K_pad / p.k_block) + slice) * sets + set) *
              p.n_block + row) * p.k_block + at;
}

template <typename T>
__global__ void conv_prep_kernel(const PrepParams p) {
  const int64_t total = static_cast<int64_t>(p.Cout_pad) * p.K_pad;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total + p.K_pad; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < total) {
      const int co = static_cast<int>(i / p.K_pad), k = static_cast<int>(i % p.K_pad);
      T v = from_float<T>(0.f);
      int c = 0, kh = 0, kw = 0;
      if (k < p.K) decompose_k(p, k, c, kh, kw);
      if (co < p.Cout && k < p.K && c < p.Cin) {  // blocked order: c past Cin is padding
        v = static_cast<const T*>(p.w)[co * p.w_so + c * p.w_sc + kh * p.w_sh + kw * p.w_sw];
        if constexpr (sizeof(T) == 4) {
          if (p.round_tf32) v = __uint_as_float(f32_to_tf32(v));
        }
      }
      T* wprep = static_cast<T*>(p.wprep);
      if constexpr (sizeof(T) == 4) {
        if (p.tf32_split) {  // the 3xTF32 patch kernel's three sets
          uint32_t big, small, fin;
          split_tf32(__float_as_uint(v), big, small, fin);
          if (fin != big) *p.nonfinite = 1;
          wprep[blocked_index<T>(p, co, k, 0)] = __uint_as_float(big);
          wprep[blocked_index<T>(p, co, k, 1)] = __uint_as_float(small);
          wprep[blocked_index<T>(p, co, k, 2)] = __uint_as_float(fin);
          continue;
        }
      }
      wprep[p.k_order == kOrderBlocked ? blocked_index<T>(p, co, k, 0) : i] = v;
    } else {
      const int k = static_cast<int>(i - total);
      int2 t = make_int2(0, 0);
      if (k < p.K) {
        int c, kh, kw;
        decompose_k(p, k, c, kh, kw);
        const int dh = kh * p.dil_h, dw = kw * p.dil_w;
        t.x = static_cast<int>(c * p.x_sc + dh * p.x_sh + dw * p.x_sw);
        t.y = static_cast<int>((static_cast<uint32_t>(dh) << 16) | static_cast<uint32_t>(dw));
      }
      p.table[k] = t;
    }
  }
}

}  // namespace fx_fuse
