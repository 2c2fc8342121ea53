// The patch kernel: the fused conv2d -> +bias -> relu -> +other on Hopper (sm_90a) for NCHW
// and channels-last input, where the implicit GEMM's A operand is built in registers from
// an input patch in shared memory instead of being gathered element by element.
//
// A persistent CTA (256 threads: two warpgroups) walks tiles of kPatchBM output pixels
// (tile_h rows of tile_w pixels) x kPatchBN output channels. K is ordered (channel block,
// kh, kw, channel) with blocks of CB channels (one 128-byte K slice: 32 fp32 or 64 16-bit),
// so a slice is one tap of one channel block. For each (tile, channel block) the input
// patch the tile reads -- patch_rows rows x patch_pitch columns x CB channels, padding
// zero-filled; channel planes (NCHW) or pixels of CB channels (channels-last) -- is copied
// once into shared memory by 16-byte cp.async, one block ahead of its use. Each slice then:
//   - multiplies: two m64n128 wgmmas per k-step and warpgroup (A from registers, B from a
//     ring slot of the prepared weights, K-major with the 128-byte swizzle);
//   - builds the next slice's A fragments from the patch (ld.shared at the tap's offset;
//     16-bit pairs packed; a TF32 patch is rounded in place once, when it has landed)
//     while that wgmma runs;
//   - refills the weight ring kPatchBAhead slices ahead.
// After a tile's last slice the epilogue (bias, relu, other, one store) runs from the
// accumulators while the next tile's first patch and weight slices are in flight.
#pragma once

#include "conv_relu_add.cuh"

namespace fx_fuse {

constexpr int kPatchThreads = 256;
constexpr int kPatchBStages = 4;  // weight ring slots
constexpr int kPatchBAhead = 2;   // slices in flight ahead of the one multiplied
constexpr int kPatchSlots = 2;    // input patch buffers (one in use, one loading)

// The weight ring, the patch slots and two buffers of per-channel bias and `other`.
constexpr int patch_smem_bytes() {
  return kPatchBStages * kPatchBN * kSliceBytes + kPatchSlots * kPatchSlotBytes +
         2 * 2 * kPatchBN * static_cast<int>(sizeof(float));
}

// D (64 x 128, fp32) += A (64 x k, this thread's fragment in registers) * B (128 x k)^T from
// shared memory; k = 8 for TF32, 16 for fp16 / bf16. scale_d == 0: D = A * B.
template <Math MATH>
__device__ __forceinline__ void wgmma_rs_m64n128(float (&d)[64], const uint32_t (&a)[4],
                                                 uint64_t b, int scale_d) {
#ifdef FX_FUSE_WGMMA
  if constexpr (MATH == Math::kTF32) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " FX_FUSE_D64_LIST
                 ", {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
                 : FX_FUSE_D64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  } else if constexpr (MATH == Math::kF16) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FX_FUSE_D64_LIST
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : FX_FUSE_D64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FX_FUSE_D64_LIST
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : FX_FUSE_D64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d));
  }
#else
  __trap();  // never launched: the host picks this kernel only where sm_90a code exists
#endif
}


// Where one tile lies: its image, first output row / column / channel, and the input
// window: first input row, first staged input column (aligned down to a 16-byte chunk)
// and the shift of the window's first column past it.
struct PatchTile {
  int64_t n;
  int oh0, ow0, n0;
  int ih0, iw0a, shift;
};

template <int VEC, bool CL>
__device__ __forceinline__ PatchTile patch_tile(const ConvParams& p, int64_t t, int n_tiles) {
  PatchTile pt;
  pt.n0 = static_cast<int>(t % n_tiles) * kPatchBN;
  t /= n_tiles;
  pt.ow0 = static_cast<int>(t % p.tiles_w) * p.tile_w;
  t /= p.tiles_w;
  pt.oh0 = static_cast<int>(t % p.tiles_h) * p.tile_h;
  pt.n = t / p.tiles_h;
  pt.ih0 = pt.oh0 * p.stride_h - p.pad_h;
  const int iw0 = pt.ow0 * p.stride_w - p.pad_w;
  // NCHW rows are copied in 16-byte chunks of columns: start at the chunk boundary below.
  pt.iw0a = CL ? iw0 : (iw0 >= 0 ? iw0 / VEC * VEC : -((VEC - 1 - iw0) / VEC) * VEC);
  pt.shift = iw0 - pt.iw0a;
  return pt;
}

template <Math MATH, bool CL>
__global__ void __launch_bounds__(kPatchThreads, 1) conv_relu_add_patch_kernel(const ConvParams p) {
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

  extern __shared__ __align__(1024) unsigned char smem[];
  if ((smem_u32(smem) & 1023u) != 0) __trap();  // the 128B swizzle is a function of the address
  unsigned char* sB = smem;
  const T* sP = reinterpret_cast<const T*>(smem + kPatchBStages * kPatchBN * kSliceBytes);
  const uint32_t sP_addr = smem_u32(sP);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ wp = static_cast<const T*>(p.wprep);

  const int n_tiles = (p.Cout + kPatchBN - 1) / kPatchBN;
  const int64_t images = p.M / (static_cast<int64_t>(p.OH) * p.OW);
  const int64_t tiles = images * p.tiles_h * p.tiles_w * n_tiles;
  if (static_cast<int64_t>(blockIdx.x) >= tiles) return;
  const int64_t my_tiles = (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x;
  auto tile_of = [&](int64_t i) { return patch_tile<VEC, CL>(p, blockIdx.x + i * gridDim.x, n_tiles); };
  const int row_step = CL ? p.patch_pitch * CPX : p.patch_pitch;

  // This thread's four tile rows (m-half h, row g or g + 8 of its warp's 16): their offsets
  // inside a patch (before the tile's shift and the tap's offset), with the thread's
  // first channel (tq, or the pair 2 tq) folded in. Fixed for the whole kernel.
  int pix[2][2];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = (warp >> 2) * 128 + h * 64 + (warp & 3) * 16 + g + 8 * hi;
      pix[h][hi] = (r / p.tile_w) * p.stride_h * row_step + (r % p.tile_w) * p.stride_w * COL +
                   (ELEM == 4 ? tq : 2 * tq) * CH;
    }

  // The patch copy: thread t takes the 16-byte chunks q = t, t + 256, ... of a patch, split
  // by multiply-high with rounded-up reciprocals (exact for q * divisor < 2^32), so that the
  // iterations are independent. NCHW: chunk q is (channel, row, column chunk); channels-last:
  // (row, column, channel chunk), patch_chunks = 8 chunks per column. fn(dst, c, r, col)
  // gets the chunk's element offset in the slot, its first channel, row and column (from
  // the window's staged origin). The rounding pass walks the same chunks: its own copies,
  // visible to the thread once its cp.async group completed.
  const int per_c = p.patch_rows * p.patch_chunks;
  const uint32_t inv_per_c = static_cast<uint32_t>(((uint64_t{1} << 32) + per_c - 1) / per_c);
  const uint32_t inv_chunks = static_cast<uint32_t>(((uint64_t{1} << 32) + p.patch_chunks - 1) / p.patch_chunks);
  auto for_my_chunks = [&](auto&& fn) {
#pragma unroll 4
    for (int q = tid; q < (CL ? 1 : CB) * per_c; q += kPatchThreads) {
      if constexpr (CL) {
        const int r = static_cast<int>(__umulhi(static_cast<uint32_t>(q), inv_chunks));
        const int rem = q - r * p.patch_chunks, col = rem >> 3, cc = rem & 7;
        fn(r * row_step + col * CPX + cc * VEC, cc * VEC, r, col);
      } else {
        const int c = static_cast<int>(__umulhi(static_cast<uint32_t>(q), inv_per_c));
        const int rem = q - c * per_c;
        const int r = static_cast<int>(__umulhi(static_cast<uint32_t>(rem), inv_chunks));
        const int ch = rem - r * p.patch_chunks;
        fn(c * CP + r * p.patch_pitch + ch * VEC, c, r, ch * VEC);
      }
    }
  };
  auto issue_patch = [&](int64_t i, int cb, int slot) {
    const PatchTile pt = tile_of(i);
    const uint32_t dst = sP_addr + static_cast<uint32_t>(slot) * kPatchSlotBytes;
    const T* img = x + pt.n * p.x_sn;
    for_my_chunks([&](int off, int c, int r, int col) {
      const int ci = cb * CB + c, ih = pt.ih0 + r, iw = pt.iw0a + col;
      // A chunk lies wholly inside or wholly outside the image (NCHW: W % VEC == 0;
      // channels-last: Cin % VEC == 0).
      const bool ok = ci < p.Cin && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
                      static_cast<unsigned>(iw) < static_cast<unsigned>(p.W);
      const T* src = ok ? img + (ci * static_cast<int>(p.x_sc) + ih * static_cast<int>(p.x_sh) +
                                 iw * static_cast<int>(p.x_sw))
                        : x;
      cp_async_16_zfill(dst + off * ELEM, src, ok);
    });
  };
  // TF32: round this thread's chunks of a landed patch in place (once per element, not
  // once per tap that reads it).
  auto round_patch = [&](int slot) {
    if constexpr (MATH == Math::kTF32) {
      unsigned char* base = smem + kPatchBStages * kPatchBN * kSliceBytes + slot * kPatchSlotBytes;
      for_my_chunks([&](int off, int, int, int) {
        uint4* q = reinterpret_cast<uint4*>(base + off * ELEM);
        uint4 v = *q;
        v.x = f32_to_tf32(__uint_as_float(v.x));
        v.y = f32_to_tf32(__uint_as_float(v.y));
        v.z = f32_to_tf32(__uint_as_float(v.z));
        v.w = f32_to_tf32(__uint_as_float(v.w));
        *q = v;
      });
    }
  };

  // Copy weight slice s of the tile with first channel n0 into ring slot `slot`.
  auto issue_b = [&](int n0, int s, int slot) {
    const uint32_t base = smem_u32(sB + slot * kPatchBN * kSliceBytes);
    const T* src = wp + static_cast<int64_t>(n0) * p.K_pad + s * CB;
#pragma unroll
    for (int q = 0; q < kPatchBN * 8 / kPatchThreads; ++q) {
      const int c = tid + q * kPatchThreads;
      const int row = c >> 3, kc = c & 7;
      cp_async_16(base + swizzle(row, kc), src + static_cast<int64_t>(row) * p.K_pad + kc * VEC);
    }
  };
  auto n0_of = [&](int64_t i) {
    return n_tiles == 1 ? 0 : static_cast<int>((blockIdx.x + i * gridDim.x) % n_tiles) * kPatchBN;
  };

  // Where a slice reads its patch: the tap (index, kw) and its offset inside the patch,
  // the channel block and the slot. Slices are walked in order, without divisions.
  struct Slice {
    int tap, kw, off, cb, slot;
  };
  auto next_slice = [&](Slice c) {
    if (++c.tap == p.taps) {
      c.tap = c.kw = c.off = 0;
      ++c.cb;
      c.slot ^= 1;
    } else if (++c.kw == p.KW) {
      c.kw = 0;
      c.off += p.dil_h * row_step - (p.KW - 1) * p.dil_w * COL;
    } else {
      c.off += p.dil_w * COL;
    }
    return c;
  };

  // A fragments of a slice: [m-half][k-step][register], in the wgmma register layout
  // (register e: row g + 8 (e & 1), k = tq + 4 (e >> 1) for TF32; the k pair 2 tq + 8 (e >> 1)
  // for 16-bit).
  using Frag = uint32_t[2][NSTEP][4];
  auto build_a = [&](const Slice& c, int shift, Frag& a) {
    const int base = c.slot * (kPatchSlotBytes / ELEM) + c.off + shift;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const T* lo = sP + base + pix[h][0];
      const T* hi = sP + base + pix[h][1];
#pragma unroll
      for (int st = 0; st < NSTEP; ++st) {
        if constexpr (ELEM == 4) {
          const uint32_t* l = reinterpret_cast<const uint32_t*>(lo) + st * KSTEP * CH;
          const uint32_t* u = reinterpret_cast<const uint32_t*>(hi) + st * KSTEP * CH;
          a[h][st][0] = l[0];
          a[h][st][1] = u[0];
          a[h][st][2] = l[4 * CH];
          a[h][st][3] = u[4 * CH];
        } else if constexpr (CL) {  // a channel pair is one aligned word
          const uint32_t* l = reinterpret_cast<const uint32_t*>(lo + st * KSTEP);
          const uint32_t* u = reinterpret_cast<const uint32_t*>(hi + st * KSTEP);
          a[h][st][0] = l[0];
          a[h][st][1] = u[0];
          a[h][st][2] = l[4];
          a[h][st][3] = u[4];
        } else {
          const unsigned short* l = reinterpret_cast<const unsigned short*>(lo) + st * KSTEP * CP;
          const unsigned short* u = reinterpret_cast<const unsigned short*>(hi) + st * KSTEP * CP;
          auto pair = [](const unsigned short* q, int k) {
            return static_cast<uint32_t>(q[k * CP]) | (static_cast<uint32_t>(q[(k + 1) * CP]) << 16);
          };
          a[h][st][0] = pair(l, 0);
          a[h][st][1] = pair(u, 0);
          a[h][st][2] = pair(l, 8);
          a[h][st][3] = pair(u, 8);
        }
      }
    }
  };

  float acc[2][64] = {};
  auto multiply = [&](const Frag& a, int slot, bool first) {
    const uint32_t b_tile = smem_u32(sB + slot * kPatchBN * kSliceBytes);
    wgmma_fence();
#pragma unroll
    for (int st = 0; st < NSTEP; ++st)
#pragma unroll
      for (int h = 0; h < 2; ++h)  // the tile's first slice overwrites the accumulators
        wgmma_rs_m64n128<MATH>(acc[h], a[h][st], wgmma_desc(b_tile + st * 32), !(first && st == 0));
    wgmma_commit();
  };

  // Bias and a per-channel `other` (or the scalar) of tile i's channels, in smem buffer
  // i % 2: written before the tile's first barrier, read by its epilogue, rewritten two
  // tiles later (after every thread passed the barriers of the tile between).
  float* s_chan = reinterpret_cast<float*>(smem + kPatchBStages * kPatchBN * kSliceBytes +
                                           kPatchSlots * kPatchSlotBytes);
  const bool other_per_channel = p.o_sn == 0 && p.o_sh == 0 && p.o_sw == 0;
  auto load_channels = [&](const PatchTile& pt, int buf) {
    if (tid < kPatchBN) {
      const int co = pt.n0 + tid;
      const bool ok = co < p.Cout;
      float* dst = s_chan + buf * 2 * kPatchBN;
      dst[tid] = ok && p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[co]) : 0.f;
      dst[kPatchBN + tid] = ok && other_per_channel ? load_other(p, co * p.o_sc) : 0.f;
    }
  };

  // Epilogue of a tile whose accumulators are complete: + bias, relu, + other, one store.
  // `other_at(off, c)`: `other` at element offset `off` (pixel and channel) or, per
  // channel, at tile channel c. Addresses advance by channel strides (no multiply per
  // element); the channel bound is checked only in a tile that crosses Cout.
  auto store_rows = [&](const PatchTile& pt, const float* chan, auto other_at, auto paired) {
    T* __restrict__ out = static_cast<T*>(p.out);
    const bool full_n = pt.n0 + kPatchBN <= p.Cout;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int r = (warp >> 2) * 128 + h * 64 + (warp & 3) * 16 + g + 8 * hi;
        const int oh = pt.oh0 + r / p.tile_w, ow = pt.ow0 + r % p.tile_w;
        if (oh >= p.OH || ow >= p.OW) continue;
        const int c0 = 2 * tq;
        T* __restrict__ y = out + (pt.n * p.y_sn + oh * p.y_sh + ow * p.y_sw + (pt.n0 + c0) * p.y_sc);
        int64_t o = pt.n * p.o_sn + oh * p.o_sh + ow * p.o_sw + (pt.n0 + c0) * p.o_sc;
#pragma unroll
        for (int nt = 0; nt < 16; ++nt) {
          const int c = nt * 8 + c0;
          const float2 b = *reinterpret_cast<const float2*>(chan + c);
          const float* a = acc[h] + nt * 4 + 2 * hi;
          if constexpr (decltype(paired)::value) {
            // channels-last output: the lane's two channels are neighbours (Cout is even)
            if (full_n || pt.n0 + c < p.Cout) {
              const T v0 = from_float<T>(fused_value(a[0], b.x, other_at(o, c)));
              const T v1 = from_float<T>(fused_value(a[1], b.y, other_at(o + p.o_sc, c + 1)));
              if constexpr (ELEM == 4) {
                *reinterpret_cast<float2*>(y) = make_float2(v0, v1);
              } else {
                *reinterpret_cast<uint32_t*>(y) =
                    static_cast<uint32_t>(reinterpret_cast<const unsigned short&>(v0)) |
                    (static_cast<uint32_t>(reinterpret_cast<const unsigned short&>(v1)) << 16);
              }
            }
          } else {
            if (full_n || pt.n0 + c < p.Cout) y[0] = from_float<T>(fused_value(a[0], b.x, other_at(o, c)));
            if (full_n || pt.n0 + c + 1 < p.Cout)
              y[p.y_sc] = from_float<T>(fused_value(a[1], b.y, other_at(o + p.o_sc, c + 1)));
          }
          y += 8 * p.y_sc;
          o += 8 * p.o_sc;
        }
      }
  };
  // One copy of the unrolled stores per kind of `other`, so that no element waits on a
  // branch before its load (and, per channel, one with paired stores).
  auto store_tile = [&](const PatchTile& pt, int buf) {
    const float* chan = s_chan + buf * 2 * kPatchBN;
    auto strided = [&](auto tag) {
      const auto* o = static_cast<const decltype(tag)*>(p.other);
      return [=](int64_t off, int) { return static_cast<float>(to_float(__ldg(o + off))); };
    };
    // Channels-last output whose channel pairs are aligned: one 2-element store per pair.
    const bool pairable = CL && p.y_sc == 1 && p.Cout % 2 == 0 && p.y_sw % 2 == 0 &&
                          p.y_sh % 2 == 0 && p.y_sn % 2 == 0 &&
                          reinterpret_cast<uintptr_t>(p.out) % (2 * ELEM) == 0;
    const std::false_type single;
    if (other_per_channel) {
      auto per_channel = [&](int64_t, int c) { return chan[kPatchBN + c]; };
      if (pairable) store_rows(pt, chan, per_channel, std::true_type{});
      else store_rows(pt, chan, per_channel, single);
    } else if (p.other_kind == kOtherF32) {
      store_rows(pt, chan, strided(float{}), single);
    } else if (p.other_kind == kOtherF16) {
      store_rows(pt, chan, strided(__half{}), single);
    } else if (p.other_kind == kOtherBF16) {
      store_rows(pt, chan, strided(__nv_bfloat16{}), single);
    } else {
      store_rows(pt, chan, [&](int64_t off, int) {
        return static_cast<float>(__ldg(static_cast<const double*>(p.other) + off));
      }, single);
    }
  };

  // Slice s of tile i (the CTA's j-th, reading `cur`): wait for its weights, refill the
  // ring, start the next unit's patch, multiply, and build the next fragments while the
  // wgmma runs. Returns where the next slice reads.
  const int S = p.cblocks * p.taps;  // slices per tile
  Frag frag[2];
  auto step = [&](int64_t i, int s, int64_t j, const PatchTile& pt, const Slice& cur, auto buf) {
    constexpr int B = decltype(buf)::value;
    const Slice nxt = next_slice(cur);
    const bool last = s + 1 == S;
    cp_async_wait<kPatchBAhead - 1>();
    // The next slice starts a unit: its patch has landed (this thread's part); round it.
    if (nxt.tap == 0) round_patch(cur.slot ^ 1);
    fence_proxy_async();
    // Every thread's copies for slice j (and the patches it reads) have landed, and every
    // warpgroup is past slice j - 1, whose wait retired the wgmma of slice j - 2: its ring
    // slot, refilled below, is free.
    __syncthreads();
    if (s + kPatchBAhead < S) {
      issue_b(pt.n0, s + kPatchBAhead, static_cast<int>((j + kPatchBAhead) % kPatchBStages));
    } else if (i + 1 < my_tiles) {
      issue_b(n0_of(i + 1), s + kPatchBAhead - S, static_cast<int>((j + kPatchBAhead) % kPatchBStages));
    }
    // A unit's first slice starts the copy of the next unit's patch into the other slot,
    // whose last reader (the previous unit) is behind the barrier above.
    if (cur.tap == 0) {
      if (cur.cb + 1 < p.cblocks) issue_patch(i, cur.cb + 1, cur.slot ^ 1);
      else if (i + 1 < my_tiles) issue_patch(i + 1, 0, cur.slot ^ 1);
    }
    cp_async_commit();
    multiply(frag[B], static_cast<int>(j % kPatchBStages), s == 0);
    wgmma_wait<1>();  // the wgmma of slice j - 1 is done: its fragments can be rebuilt
    if (!last) build_a(nxt, pt.shift, frag[1 - B]);
    return nxt;
  };

  // Prologue: the first unit's patch and two weight slices.
  issue_patch(0, 0, 0);
  issue_b(n0_of(0), 0, 0);
  cp_async_commit();
  if (S > 1) issue_b(n0_of(0), 1, 1);
  cp_async_commit();
  cp_async_wait<1>();
  round_patch(0);
  __syncthreads();
  PatchTile pt = tile_of(0);
  Slice cur{0, 0, 0, 0, 0};
  build_a(cur, pt.shift, frag[0]);
  int64_t j = 0;
  for (int64_t i = 0; i < my_tiles; ++i) {
    load_channels(pt, static_cast<int>(i & 1));
    int s = 0;
    for (; s + 1 < S; s += 2, j += 2) {
      cur = step(i, s, j, pt, cur, std::integral_constant<int, 0>{});
      cur = step(i, s + 1, j + 1, pt, cur, std::integral_constant<int, 1>{});
    }
    if (s < S) {
      cur = step(i, s, j, pt, cur, std::integral_constant<int, 0>{});
      ++j;
    }
    wgmma_wait<0>();
    store_tile(pt, static_cast<int>(i & 1));
    if (i + 1 < my_tiles) {
      // The next tile's first unit: cur walked past the last slice into (cb = cblocks,
      // slot of the next unit).
      pt = tile_of(i + 1);
      cur = Slice{0, 0, 0, 0, cur.slot};
      build_a(cur, pt.shift, frag[0]);
    }
  }
}

}  // namespace fx_fuse
