/* The loops of a compression pass on the CPU: TaR's scores (each key read once, its patch's mean unit
 * key looked up in a table that stays in the CPU's cache), the recent window, the top-k picks, index
 * lists from masks, and the in-place compaction of kept rows (each moved once, no scratch). Each works on
 * every (layer, KV head) row in one call: no Python per layer, no full-size temporaries.
 *
 * Plain C, no torch headers: kernels/native.py builds it with the system's C compiler on first use and
 * calls it through ctypes. The plain-torch code in compression/ is the fallback where no compiler is
 * found, and the oracle the tests hold these loops to (tests/test_native_pass.py). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FLOAT32 = 0, BFLOAT16 = 1, FLOAT16 = 2 };

#define NORM_FLOOR 1e-12f  /* as torch.nn.functional.normalize: a zero key scores 0, not NaN */
#define MAX_DIM 4096        /* head_dim of every model potwatch knows is at most 256 */
#define MAX_PATCHES 65536   /* a 256 x 256 patch grid; beyond it the caller's path numbers the patches */

static inline float bfloat16_value(uint16_t bits)
{
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static inline float float16_value(uint16_t bits)
{
    uint32_t sign = (uint32_t)(bits & 0x8000) << 16, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
    uint32_t wide;
    if (exponent == 0x1f) {
        wide = sign | 0x7f800000u | (mantissa << 13); /* inf, nan */
    } else if (exponent) {
        wide = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa) { /* subnormal: value = mantissa * 2^-24 */
        float value = ldexpf((float)mantissa, -24);
        return sign ? -value : value;
    } else {
        wide = sign;
    }
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* Key `token` of row `row` as float32: a pointer into the cache for float32 keys, else decoded into `buffer`. */
static inline const float *key_row(const void *keys, int dtype, int64_t row_stride, int64_t token_stride, int64_t row,
                            int64_t token, int64_t dim, float *buffer)
{
    int64_t offset = row * row_stride + token * token_stride;
    if (dtype == FLOAT32)
        return (const float *)keys + offset;
    const uint16_t *bits = (const uint16_t *)keys + offset;
    for (int64_t d = 0; d < dim; d++)
        buffer[d] = dtype == BFLOAT16 ? bfloat16_value(bits[d]) : float16_value(bits[d]);
    return buffer;
}

/* Eight floats, one AVX register (two NEON ones): GCC's and clang's vector extension, so the sums below
 * run in independent lanes without a reordering flag such as -ffast-math. */
typedef float float8 __attribute__((vector_size(32)));

static inline float8 load8(const float *p)
{
    float8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float lanes_total(float8 v)
{
    float total = 0.0f;
    for (int l = 0; l < 8; l++)
        total += v[l];
    return total;
}

/* dot(a, b) and |a|^2 in one read of a: two register-wide partial sums each, so adds do not wait on adds. */
static inline void dot_and_square(const float *a, const float *b, int64_t dim, float *dot, float *square)
{
    float8 dot0 = {0}, dot1 = {0}, square0 = {0}, square1 = {0};
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16) {
        float8 a0 = load8(a + d), a1 = load8(a + d + 8), b0 = load8(b + d), b1 = load8(b + d + 8);
        dot0 += a0 * b0;
        dot1 += a1 * b1;
        square0 += a0 * a0;
        square1 += a1 * a1;
    }
    float total_dot = lanes_total(dot0 + dot1), total_square = lanes_total(square0 + square1);
    for (; d < dim; d++) {
        total_dot += a[d] * b[d];
        total_square += a[d] * a[d];
    }
    *dot = total_dot;
    *square = total_square;
}

static inline float floored_norm(float square)
{
    float norm = sqrtf(square);
    return norm > NORM_FLOOR ? norm : NORM_FLOOR;
}

/* TaR (InfiniPot-V Eq. 4) for the n visual tokens of each of `heads` rows, in one read of their keys.
 *
 * Token j of row h sits at key slot at[h, j], at patch (row, col)[h, j]. Recent tokens (recent[h, j] != 0)
 * score +inf; every other token scores minus the cosine between its key and the mean unit key of the
 * row's recent tokens at its patch, or `novel` when none is there. The means live in a table with a row
 * per patch of the grid the tokens span, rebuilt for each row; it stays in the CPU's cache. Returns -1,
 * writing nothing, where head_dim or that grid is too large (the caller's plain-torch path then). */
int tar_scores(const void *keys, int dtype, int64_t heads, int64_t row_stride, int64_t token_stride, int64_t dim,
               const int64_t *at, const int16_t *patch_row, const int16_t *patch_col, const uint8_t *recent, int64_t n,
               float novel, float *scores)
{
    if (dim > MAX_DIM || heads * n == 0)
        return heads * n == 0 ? 0 : -1;
    int64_t top = patch_row[0], bottom = patch_row[0], left = patch_col[0], right = patch_col[0];
    for (int64_t i = 1; i < heads * n; i++) {
        top = patch_row[i] < top ? patch_row[i] : top;
        bottom = patch_row[i] > bottom ? patch_row[i] : bottom;
        left = patch_col[i] < left ? patch_col[i] : left;
        right = patch_col[i] > right ? patch_col[i] : right;
    }
    int64_t width = right - left + 1, patches = (bottom - top + 1) * width;
    if (patches > MAX_PATCHES)
        return -1;
    float *table = malloc((size_t)(patches * dim) * sizeof(float));
    int64_t *counts = malloc((size_t)patches * sizeof(int64_t));
    if (!table || !counts) {
        free(table);
        free(counts);
        return -1;
    }
    float buffer[MAX_DIM];
    for (int64_t h = 0; h < heads; h++) {
        const int64_t *slot = at + h * n;
        const int16_t *r = patch_row + h * n, *c = patch_col + h * n;
        const uint8_t *is_recent = recent + h * n;
        float *score = scores + h * n;
        memset(table, 0, (size_t)(patches * dim) * sizeof(float));
        memset(counts, 0, (size_t)patches * sizeof(int64_t));
        for (int64_t j = 0; j < n; j++) { /* the table: sum of unit keys per patch, then their mean */
            if (!is_recent[j])
                continue;
            int64_t patch = (r[j] - top) * width + (c[j] - left);
            const float *key = key_row(keys, dtype, row_stride, token_stride, h, slot[j], dim, buffer);
            float unused, square;
            dot_and_square(key, key, dim, &unused, &square);
            float norm = floored_norm(square);
            float *sum = table + patch * dim;
            for (int64_t d = 0; d < dim; d++)
                sum[d] += key[d] / norm;
            counts[patch]++;
        }
        for (int64_t p = 0; p < patches; p++) {
            if (counts[p] > 1) {
                float held = (float)counts[p];
                for (int64_t d = 0; d < dim; d++)
                    table[p * dim + d] /= held;
            }
        }
        for (int64_t j = 0; j < n; j++) { /* the scores of the older tokens */
            int64_t patch = (r[j] - top) * width + (c[j] - left);
            if (is_recent[j]) {
                score[j] = INFINITY;
            } else if (counts[patch] == 0) {
                score[j] = novel;
            } else {
                const float *key = key_row(keys, dtype, row_stride, token_stride, h, slot[j], dim, buffer);
                float similarity, square;
                dot_and_square(key, table + patch * dim, dim, &similarity, &square);
                score[j] = -(similarity / floored_norm(square));
            }
        }
    }
    free(table);
    free(counts);
    return 0;
}

/* rows[b][j] = rows[b][keep[r, j]] for every j < m, in place, for `batch` rows of items of `item_bytes`
 * bytes, rows `row_bytes` apart, where r is keep_row[b] (b itself when keep_row is NULL: the position ids
 * keep one row per RoPE section beside the heads, all moving as their head's row). keep[r] is strictly
 * ascending, so keep[r, j] >= j: walking j upwards never overwrites an item still to be read. A run of
 * consecutive sources moves with one memmove, and a leading run already in place is not touched. */
#define MOVE_EACH(type)                                                                                    \
    for (; j < m; j++)                                                                                     \
    ((type *)row)[j] = ((const type *)row)[source[j]]

void move_rows(char *base, int64_t batch, int64_t row_bytes, int64_t item_bytes, const int64_t *keep, int64_t m,
               const int64_t *keep_row)
{
    for (int64_t b = 0; b < batch; b++) {
        char *row = base + b * row_bytes;
        const int64_t *source = keep + (keep_row ? keep_row[b] : b) * m;
        int64_t j = 0;
        while (j < m && source[j] == j)
            j++;
        switch (item_bytes) { /* metadata: one load and store per item, no call */
        case 1: MOVE_EACH(uint8_t); continue;
        case 2: MOVE_EACH(uint16_t); continue;
        case 4: MOVE_EACH(uint32_t); continue;
        case 8: MOVE_EACH(uint64_t); continue;
        }
        while (j < m) {
            int64_t end = j + 1;
            while (end < m && source[end] == source[end - 1] + 1)
                end++;
            memmove(row + j * item_bytes, row + source[j] * item_bytes, (size_t)((end - j) * item_bytes));
            j = end;
        }
    }
}

/* The recent window of each of `heads` rows (selection.recent_tokens' contract) for rows whose frames
 * ascend along them, so newest first is back to front. Per row: r = max(1, floor(held * ratio / most
 * + 1e-9)) frames, held being the row's real tokens (valid[h, j], all when valid is NULL) and most the
 * most real tokens one frame holds; in_recent marks the real tokens of its r newest frames, kept the
 * first keep[h] of those counted back to front. Returns -1, writing nothing, when a row's frames do not
 * ascend (the caller sorts instead). */
int recent_window(const int32_t *frame, const uint8_t *valid, int64_t heads, int64_t n, double ratio,
                  const int64_t *keep, uint8_t *in_recent, uint8_t *kept)
{
    for (int64_t i = 0; i < heads * n; i++)
        if (i % n && frame[i] < frame[i - 1])
            return -1;
    for (int64_t h = 0; h < heads; h++) {
        const int32_t *f = frame + h * n;
        const uint8_t *real = valid ? valid + h * n : NULL;
        int64_t most = 1, held = 0, run = 0;
        for (int64_t j = n - 1; j >= 0; j--) {
            if (j < n - 1 && f[j] != f[j + 1])
                run = 0;
            if (!real || real[j]) {
                held++;
                if (++run > most)
                    most = run;
            }
        }
        int64_t window = (int64_t)floor((double)held * ratio / (double)most + 1e-9);
        if (window < 1)
            window = 1;
        int64_t rank = 0, newest_first = 0;
        for (int64_t j = n - 1; j >= 0; j--, newest_first++) {
            if (j < n - 1 && f[j] != f[j + 1])
                rank++;
            uint8_t recent = rank < window && (!real || real[j]);
            in_recent[h * n + j] = recent;
            kept[h * n + j] = recent && newest_first < keep[h];
        }
    }
    return 0;
}

/* selection.ranking_key: a float score's order as an int64 unique in its row, the order of the score
 * (-0.0 as +0.0) in the high half and the earlier position winning a tie in the low half. */
static inline int64_t ranking_key(float score, int64_t j, int64_t n)
{
    float positive_zero = score + 0.0f;
    int32_t bits;
    memcpy(&bits, &positive_zero, sizeof bits);
    int32_t ordered = bits ^ ((bits >> 31) & 0x7fffffff);
    return (int64_t)ordered * 4294967296LL + (n - 1 - j);
}

/* The k-th largest of n distinct keys (1 <= k <= n): a radix select, eight bits at a time from the top.
 * Each pass counts the candidates' next byte, keeps those whose byte holds the k-th largest, and moves
 * on; no comparison of two keys, so no branch the CPU mispredicts (about 2.5x a quickselect here).
 * `a` and `b` are scratch of n each. */
static int64_t kth_largest(const int64_t *keys, int64_t n, int64_t k, uint64_t *a, uint64_t *b)
{
    const uint64_t sign = 0x8000000000000000ull; /* flipped, signed order becomes unsigned order */
    for (int64_t j = 0; j < n; j++)
        a[j] = (uint64_t)keys[j] ^ sign;
    uint64_t found = 0;
    int64_t count = n;
    for (int shift = 56; shift >= 0 && count > 1; shift -= 8) {
        int64_t histogram[256] = {0};
        for (int64_t j = 0; j < count; j++)
            histogram[(a[j] >> shift) & 255]++;
        int digit = 255;
        while (histogram[digit] < k)
            k -= histogram[digit--];
        int64_t kept = 0;
        for (int64_t j = 0; j < count; j++) {
            b[kept] = a[j];
            kept += ((a[j] >> shift) & 255) == (uint64_t)digit;
        }
        uint64_t *swap = a;
        a = b;
        b = swap;
        count = kept;
        found |= (uint64_t)digit << shift;
    }
    return (int64_t)((count == 1 ? a[0] : found) ^ sign);
}

/* picked[h, j] = 1 for the count[h] best scores of row h among its allowed positions (allowed[h, j];
 * every position when allowed is NULL), a tie going to the earlier position: selection.pick_ranked and
 * top_indices. `scratch` holds 3n int64. */
void pick_top(const float *score, const uint8_t *allowed, const int64_t *count, int64_t heads, int64_t n,
              int64_t *scratch, uint8_t *picked)
{
    int64_t *key = scratch;
    uint64_t *a = (uint64_t *)(scratch + n), *b = (uint64_t *)(scratch + 2 * n);
    for (int64_t h = 0; h < heads; h++) {
        const float *s = score + h * n;
        const uint8_t *ok = allowed ? allowed + h * n : NULL;
        uint8_t *out = picked + h * n;
        int64_t k = count[h] < 0 ? 0 : (count[h] > n ? n : count[h]);
        memset(out, 0, (size_t)n);
        if (k == 0)
            continue;
        for (int64_t j = 0; j < n; j++)
            key[j] = ranking_key(ok && !ok[j] ? -INFINITY : s[j], j, n);
        int64_t least = kth_largest(key, n, k, a, b);
        for (int64_t j = 0; j < n; j++)
            out[j] = key[j] >= least && (!ok || ok[j]);
    }
}

/* positions[h, :count] = the positions j of row h with mask[h, j] set, ascending (rows of the mask
 * `mask_stride` bytes apart). Returns -1 when a row holds other than `count` of them. */
int mask_positions(const uint8_t *mask, int64_t mask_stride, int64_t heads, int64_t n, int64_t count,
                   int64_t *positions)
{
    for (int64_t h = 0; h < heads; h++) {
        const uint8_t *row = mask + h * mask_stride;
        int64_t *out = positions + h * count, found = 0;
        for (int64_t j = 0; j < n; j++) {
            if (row[j]) {
                if (found == count)
                    return -1;
                out[found++] = j;
            }
        }
        if (found != count)
            return -1;
    }
    return 0;
}
