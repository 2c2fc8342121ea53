// Kernel parameters shared by the host binding and the device code (plain C++; divmod
// alone takes CUDA's multiply-high in device code).
#pragma once

#include <cstdint>

#include <vector_types.h>

namespace fx_fuse {

// One K slice of a tile row is 128 bytes (32 fp32 or 64 16-bit elements).
constexpr int kSliceBytes = 128;

// Tile configurations. 128x128 with 8 warps (2 x 4, warp tile 64x32) for Cout > 64 (4 warps
// of 64x64 measured slower: 3.66 vs 3.22 ms NCHW, 2.71 vs 2.52 ms channels-last);
// 128x64 (4 x 2, warp tile 32x32) when Cout <= 64 so that half the MMAs are not padding.
// kTile128x128Wgmma: the 128x128 tile multiplied by Hopper's wgmma (sm_90a builds on a
// compute capability 9.0 GPU); it falls back to kTile128x128 where that code is absent.
// kTilePatch: the patch kernel (patch_conv.cuh) for NCHW and channels-last input on Hopper.
enum TileConfig : int { kTile128x128 = 0, kTile128x64 = 1, kTile128x128Wgmma = 2, kTilePatch = 3 };

// The patch kernel's tile: kPatchBM output pixels x kPatchBN output channels (kPatchBNSmall
// for layers of at most that many, whose wider tiles would be half padding). An input
// patch slot holds one channel block (one 128-byte K slice of channels: 32 fp32 or 64
// 16-bit). NCHW: kPatchChannelPitch elements per channel, 2336 bytes (32 modulo 128) for
// fp32, 1168 (16 modulo 64) for 16-bit; channels-last: kPatchPixelBytes per pixel (the
// block's 128 bytes and 16 of padding: 36 words, 4 modulo 32). Either way the lane groups
// of a fragment load fall on distinct shared-memory banks and 16-byte chunks stay aligned.
constexpr int kPatchBM = 256;
constexpr int kPatchBN = 128;
constexpr int kPatchBNSmall = 64;
constexpr int kPatchChannelPitch = 584;
constexpr int kPatchPixelBytes = 144;
// A slot: >= 32 x 584 x 4 (NCHW) and the reads past a planes patch of that many positions
// (patch_conv.cuh, transpose_planes: 31 x 584 + 7 x 96 words); 520 pixels x 144 (channels-last).
constexpr int kPatchSlotBytes = 75136;

// Whether the patch kernel copies a channels-last patch by one TMA tensor copy: fp32 (16-bit
// keeps its 16-byte cp.async, measured faster there). The copy's box is at most
// kPatchBoxMaxPixels wide.
constexpr bool patch_box_copy(bool channels_last, int elem_bytes) {
  return channels_last && elem_bytes == 4;
}
constexpr int kPatchBoxMaxPixels = 256;

// Whether the NCHW patch of a kernel with staged rows (below) lands as dense channel rows,
// patch_rows x patch_pitch elements a channel: the TF32 planes kernel and 16-bit, whose
// patch warps transpose or interleave the patch once it has landed. It comes by one TMA
// tensor copy (nchw_box_copy: a box of patch_pitch columns x patch_rows rows x the channel
// block, zeros outside the image and past C_in), or where wider than a box by one bulk copy
// per row. (Where nothing is staged the box measured 1.5-3 % slower on the planes kernel:
// there the copies are not on the consumers' path.)
constexpr bool dense_patch_rows(bool staged_rows, bool planes, int elem_bytes) {
  return staged_rows && (planes || elem_bytes == 2);
}
// Whether such a patch comes by the tensor copy (the host encodes its map, the patch warps
// issue it): where it is dense rows no wider than a box.
constexpr bool nchw_box_copy(bool staged_rows, bool planes, int elem_bytes, int patch_pitch) {
  return dense_patch_rows(staged_rows, planes, elem_bytes) && patch_pitch <= kPatchBoxMaxPixels;
}

// Whether the patch kernel reads its A operand by wgmma straight from the patch (PLANES,
// patch_conv.cuh: the patch transposed into planes of 4 channels): TF32 NCHW input whose
// tiles put an m-half's 64 pixels in one output row (tile_w >= 64) of 64 neighbouring
// input columns (stride 1 along W; no wider stride fits such tiles in a patch today), on
// 128-channel tiles (64-channel tiles measured slower: their units leave the producer half
// the time for the transpose).
constexpr bool patch_planes(bool tf32, bool channels_last, int bn, int tile_w, int stride_w) {
  return tf32 && !channels_last && bn == kPatchBN && tile_w >= 64 && stride_w == 1;
}

// The K-table sits in shared memory when it has at most this many entries (32 KB); the
// 128x128 kernels require it there (the launcher picks 128x64 tiles for longer K).
constexpr int kSmemTableEntries = 4096;

enum class Math : int { kTF32 = 0, kF32x3 = 1, kF16 = 2, kBF16 = 3 };

enum OtherKind : int { kOtherScalar = 0, kOtherF32 = 1, kOtherF16 = 2, kOtherBF16 = 3, kOtherF64 = 4 };

// A divisor d <= 2^31 fixed at launch: n / d for every n < 2^31 as (umulhi(n, mul) + n) >>
// shift (Granlund and Montgomery, "Division by invariant integers using multiplication",
// 1994: mul = floor(2^32 (2^shift - d) / d) + 1, shift = ceil(log2(d)); the sum fits 32
// bits where n < 2^31): three instructions (divmod), where a division is a dependent chain
// through the reciprocal unit. The patch kernel walks its tiles by three; the direct
// kernel's eight-channel form and the epilogue pass split their indices by it.
struct FastDiv {
  uint32_t d, mul, shift;
};

constexpr FastDiv fast_div(uint32_t d) {
  uint32_t shift = 0;
  while ((uint64_t{1} << shift) < d) ++shift;
  const uint64_t mul = (uint64_t{1} << 32) * ((uint64_t{1} << shift) - d) / d + 1;
  return FastDiv{d, static_cast<uint32_t>(mul), shift};
}

struct QuotRem {
  uint32_t q, r;
};

// n / f.d and n % f.d, for n < 2^31 (host and device code).
constexpr QuotRem divmod(uint32_t n, const FastDiv& f) {
#ifdef __CUDA_ARCH__
  const uint32_t hi = __umulhi(n, f.mul);
#else
  const auto hi = static_cast<uint32_t>((uint64_t{n} * f.mul) >> 32);
#endif
  const uint32_t q = (hi + n) >> f.shift;
  return QuotRem{q, n - q * f.d};
}

// divmod against the division, for n at either side of the multiples m d (m = 0, 1, 4, 13,
// ...) below 2^31 and near the top of the range.
constexpr bool fast_div_exact(uint32_t d) {
  const FastDiv f = fast_div(d);
  const uint32_t top = 0x7fffffffu;
  for (uint64_t m = 0; m * d <= top; m = m * 3 + 1) {
    for (uint64_t n = m * d > 0 ? m * d - 1 : 0; n <= m * d + 1 && n <= top; ++n) {
      const QuotRem qr = divmod(static_cast<uint32_t>(n), f);
      if (qr.q != n / d || qr.r != n % d) return false;
    }
  }
  for (uint64_t n = top > 2 * uint64_t{d} ? top - 2 * uint64_t{d} : 0; n <= top; n += d / 2 + 1) {
    const QuotRem qr = divmod(static_cast<uint32_t>(n), f);
    if (qr.q != n / d || qr.r != n % d) return false;
  }
  return true;
}
#ifndef __CUDA_ARCH__  // (the device's multiply-high is not constexpr)
static_assert(fast_div_exact(1) && fast_div_exact(2) && fast_div_exact(3) && fast_div_exact(7) &&
                  fast_div_exact(63) && fast_div_exact(64) && fast_div_exact(65) && fast_div_exact(126) &&
                  fast_div_exact(1000003) && fast_div_exact(0x40000001u) && fast_div_exact(0x80000000u),
              "FastDiv: divmod must equal the division");
#endif

struct ConvParams {
  const void* x;        // input (N, C, H, W) with strides x_s*, elements of T
  const void* wprep;    // [Cout_pad][K_pad] weights in the kernel's K order (the patch
                        // kernel: slice by slice, swizzled; see blocked_index)
  const int2* table;    // [K_pad] {offset from the pixel base, dh << 16 | dw}
  const void* bias;     // [Cout] or nullptr
  const void* other;    // strided over the output's (n, c, h, w); nullptr: other_scalar
  void* out;            // strided output (y_s*)
  int64_t M;            // N * OH * OW
  int Cout, K, K_pad;
  int H, W, OH, OW;
  int stride_h, stride_w, pad_h, pad_w;
  int span_h, span_w;   // extent of the dilated kernel: dilation * (k - 1) + 1
  int64_t x_sn, x_sh, x_sw;
  int64_t x_sc;
  // The patch kernel only: tiles of tile_h x tile_w output pixels, tiles_h x tiles_w per
  // image; a patch of patch_rows rows of patch_chunks 16-byte chunks, patch_pitch elements
  // (NCHW) or pixels (channels-last) long; cblocks channel blocks of Cin channels;
  // taps = KH * KW.
  int Cin, KW, taps, dil_h, dil_w;
  int tile_h, tile_w, tiles_h, tiles_w;
  // ... and its tile walk (tile t: channel tile t % cout_tiles, then column tile, row
  // tile, image) over patch_tile_count tiles, set by its launcher (with_tile_walk).
  FastDiv div_cout_tiles, div_tiles_w, div_tiles_h;
  uint32_t patch_tile_count;
  int patch_rows, patch_chunks, patch_pitch, cblocks;
  int other_kind;
  float other_scalar;
  int64_t o_sn, o_sc, o_sh, o_sw;
  int64_t y_sn, y_sc, y_sh, y_sw;
  // The 3xTF32 patch kernel only: nonzero where a weight is Inf or NaN (set by the weight
  // preparation, which ran before on the same stream).
  const int* w_nonfinite;
};

// The images p covers (M = N * OH * OW), for host code.
inline int64_t images(const ConvParams& p) { return p.M / (static_cast<int64_t>(p.OH) * p.OW); }

// The patch kernel's tiles (of bn output channels) for p, for host code.
inline int64_t patch_tiles(const ConvParams& p, int bn) {
  return images(p) * p.tiles_h * p.tiles_w * ((p.Cout + bn - 1) / bn);
}

// p with the patch kernel's tile walk for tiles of bn output channels (fewer than 2^31
// tiles: its launcher checks).
inline ConvParams with_tile_walk(ConvParams p, int bn) {
  p.div_cout_tiles = fast_div(static_cast<uint32_t>((p.Cout + bn - 1) / bn));
  p.div_tiles_w = fast_div(static_cast<uint32_t>(p.tiles_w));
  p.div_tiles_h = fast_div(static_cast<uint32_t>(p.tiles_h));
  p.patch_tile_count = static_cast<uint32_t>(patch_tiles(p, bn));
  return p;
}

// The depthwise kernel (depthwise.cu): grouped convolutions of cpg input channels per group
// (1: depthwise) and `mult` output channels per group. A block of kDwTileW x kDwThreadRows
// threads computes tiles of kDwTileW columns of up to depthwise_co(mult) output channels,
// each thread kDwRows consecutive rows of one column, from the tile's input windows (one
// per input channel of the group) staged in shared memory as floats with their weights;
// at most kDwMaxSmem bytes. A plane (one image's group) takes plane_warps warps of the
// block (tiles of plane_warps x kDwRows rows), so that a block holds kDwThreadRows /
// plane_warps planes: small planes share a block instead of leaving most of it idle.
constexpr int kDwTileW = 32;
constexpr int kDwThreadRows = 8;
constexpr int kDwTileH = 64;
constexpr int kDwRows = kDwTileH / kDwThreadRows;  // consecutive output rows per thread
constexpr int kDwMaxSmem = 48 * 1024;

struct DepthwiseShape {
  int cpg;          // input channels per group
  int mult;         // output channels per group
  int chunks;       // blocks per plane and tile: ceil(mult / depthwise_co(mult))
  int KH;
  int planes;       // images x groups
  int plane_warps;  // warps per plane: 1, 2, 4 or 8, the fewest whose rows cover OH and
                    // whose planes per block fit in shared memory
  int tiles_w;      // tiles per plane: tiles_w x tiles_h
  int tiles;
  int rows_in;      // window rows: (min(tile rows, OH rounded up to kDwRows) - 1) * stride_h + span_h
  int pitch;        // floats per window row: (kDwTileW - 1) * stride_w + span_w, and room for
                    // the shift to a 16-byte chunk, rounded up to 16 bytes of the input
  int vec;          // 1: rows staged by 16-byte loads (dense, aligned rows, W a multiple of 16 bytes)
  int row_units;           // per window row: 16-byte chunks (vec) or elements
  uint32_t row_units_inv;  // ceil(2^32 / row_units): q / row_units by multiply-high
};

constexpr int depthwise_co(int mult) { return mult == 1 ? 1 : mult == 2 ? 2 : 4; }

// A block's shared memory: per plane, a window and weights for each of its input channels.
constexpr int64_t depthwise_smem_bytes(int64_t planes_per_block, int64_t cpg, int64_t mult,
                                       int64_t taps, int64_t rows_in, int64_t pitch) {
  return planes_per_block * cpg * (depthwise_co(static_cast<int>(mult)) * taps + rows_in * pitch) *
         static_cast<int64_t>(sizeof(float));
}
inline int depthwise_smem_bytes(const DepthwiseShape& d, int taps) {
  return static_cast<int>(
      depthwise_smem_bytes(kDwThreadRows / d.plane_warps, d.cpg, d.mult, taps, d.rows_in, d.pitch));
}

// The channels-last depthwise kernel (depthwise_cl.cu): one input and one output channel
// per group, the K x K sizes of depthwise_cl_sizes, channels in groups of 4 (16 bytes fp32,
// 8 bytes 16-bit). A thread computes a tile of output pixels (depthwise_cl_tile) for one
// group of channels; a block of kDwClThreads threads holds tiles_per_block x cg_block of
// them: cg_block groups (the block's chunk of them, blockIdx.y) for tiles_per_block tiles,
// and its blocks walk the tiles (n, tile row, tile column) in turn.
constexpr int kDwClThreads = 256;
constexpr int kDwClBlocksPerSm = 2;  // its __launch_bounds__: at most 128 registers
constexpr int kDwClGroup = 4;

constexpr bool depthwise_cl_sizes(int64_t k, int64_t stride) {
  return ((k == 3 || k == 5) && (stride == 1 || stride == 2)) || (k == 7 && stride == 1);
}

// A thread's tile: h x w output pixels, its input rows walked top to bottom either unrolled
// (the tile's loads issued at once) or in a loop with the next row's loads in flight.
// Measured (docs/performance.md, v45): 3x3 fastest at 2 rows unrolled (4 columns for
// 16-bit at stride 1, else 2); larger kernels at 4 x 2 in the loop, 2 x 2 for fp32 at
// stride 2 and 7x7 (at 4 x 2 they spill at 128 registers; unrolled, every larger kernel's
// loads issued at once spill).
struct DwClTile {
  int h, w;
  bool unroll;
};
constexpr DwClTile depthwise_cl_tile(int k, int stride, int elem_bytes) {
  if (k == 3) return {2, elem_bytes == 2 && stride == 1 ? 4 : 2, true};
  return {elem_bytes == 4 && (stride == 2 || k == 7) ? 2 : 4, 2, false};
}

struct DepthwiseClShape {
  int cg_block;         // channel groups per block; 0: the kernel does not take the sizes
  int chunks;           // blocks per tile: ceil(channel groups / cg_block)
  int tiles_per_block;  // kDwClThreads / cg_block
  int tiles_w;          // tiles per output row: ceil(OW / tile width)
  int tiles_h;          // tile rows per image: ceil(OH / tile height)
  int tiles;            // N x tiles_h x tiles_w
  int blocks;           // the grid's x: blocks walking the tiles
};

// A block's shared memory: its channels' weights, bias and per-channel `other` as floats.
constexpr int64_t depthwise_cl_smem_bytes(int64_t cg_block, int64_t taps) {
  return (taps + 2) * cg_block * kDwClGroup * static_cast<int64_t>(sizeof(float));
}
inline int depthwise_cl_smem_bytes(const DepthwiseClShape& d, int taps) {
  return static_cast<int>(depthwise_cl_smem_bytes(d.cg_block, taps));
}

// The direct kernel (direct.cu): small convolutions, any groups, layout, stride and
// dilation, in one launch on the CUDA cores. A block of kDirectThreads threads computes
// `rows` output rows of one image for `co_block` output channels of one group from the
// rows' input window (the group's cpg channels, window_pitch floats each: rows_in x
// cols_in, zero in the padding) and the channels' weights, staged in shared memory as
// floats (at most kDirectMaxSmem bytes). A thread computes one output at a time
// (co_t = 1), `split` neighbouring lanes sharing it, each summing every split-th input
// channel; or, where a block has many outputs a thread (co_t = kDirectCoT), kDirectCoT
// output channels of kDirectRowT pixels of one column at a time, reading a tap's weights
// as two 16-byte vectors that every lane of a warp reads alike.
constexpr int kDirectThreads = 256;
constexpr int kDirectMaxSmem = 48 * 1024;
constexpr int kDirectCoT = 8;
constexpr int kDirectRowT = 4;

struct DirectShape {
  int cpg;           // input channels per group
  int co_block;      // output channels per block (of one group); 0: the kernel does not take the sizes
  int co_blocks;     // blocks per image and band: groups x ceil(output channels per group / co_block)
  int rows;          // output rows per block
  int bands;         // blocks per image and channel block: ceil(OH / rows)
  int split;         // lanes per output: a power of two up to 32
  int rows_in;       // window rows: (rows - 1) * stride_h + span_h
  int cols_in;       // window columns: (OW - 1) * stride_w + span_w
  int window_pitch;  // floats per channel's window: rows_in x cols_in, made odd (a split's lanes
                     // read distinct banks)
  int co_t;          // output channels a thread computes at a time: 1 or kDirectCoT (then
                     // co_block is a multiple of it, the weights staged [cpg x taps][co_block],
                     // zero past the group's channels, and rows a multiple of kDirectRowT)
  // co_t = kDirectCoT: the divisors of a staged row's index (rows_in: its channel and row)
  // and of an item's (rows / kDirectRowT x OW: its channel group; OW: its rows and column)
  FastDiv window_rows, tile_columns, out_cols;
};

constexpr int64_t direct_window_pitch(int64_t rows_in, int64_t cols_in) { return rows_in * cols_in | 1; }

// Where a block's weights start in its shared memory, in floats: after the windows, at a
// 16-byte boundary.
constexpr int64_t direct_weights_offset(int64_t cpg, int64_t window_pitch) {
  return (cpg * window_pitch + 3) / 4 * 4;
}

// A block's shared memory: the windows, then the weights.
constexpr int64_t direct_smem_bytes(int64_t cpg, int64_t window_pitch, int64_t co_block, int64_t taps) {
  return (direct_weights_offset(cpg, window_pitch) + cpg * co_block * taps) * static_cast<int64_t>(sizeof(float));
}

// Weight preparation and the K-table. K order: (c, kh, kw) for channels-first input,
// (kh, kw, c) for channels-last (so a 16-byte chunk of K is 16 bytes of one pixel),
// (channel block, kh, kw, c) for the patch kernel (one K slice = one tap of one block).
enum KOrder : int { kOrderCHW = 0, kOrderHWC = 1, kOrderBlocked = 2 };

struct PrepParams {
  const void* w;  // (Cout, Cin, KH, KW) with strides w_s*
  int64_t w_so, w_sc, w_sh, w_sw;
  void* wprep;    // [Cout_pad][K_pad]
  int2* table;    // [K_pad]
  int Cout, Cout_pad, Cin, KH, KW, K, K_pad;
  int k_order;
  int k_block;  // channels per block (kOrderBlocked)
  int n_block;  // output channels per tile (kOrderBlocked)
  int64_t x_sc, x_sh, x_sw;
  int dil_h, dil_w;
  int round_tf32;
  // kOrderBlocked for the 3xTF32 patch kernel: each slice as three sets of TF32 weights
  // (big, small, finite big; see split_tf32), and *nonfinite = 1 where a weight is Inf or NaN.
  int tf32_split;
  int* nonfinite;
};

}  // namespace fx_fuse
