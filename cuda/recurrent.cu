// recurrent.cu -- fused per-time-step kernels of SimpleRNN, LSTM and GRU.
//
// Must match the NumPy reference in gpulayers/layers/recurrent_reference.py (rnn_forward,
// rnn_backward). The matmuls (input projection of all steps, the recurrent h @ U of each
// step, the weight gradients over all steps) run as GEMMs outside these kernels; each kernel
// applies one step's gates and state update (forward) or their gradients (backward).
//
// One thread per (b, j): b in [0, B) batch row, j in [0, u) unit; consecutive threads take
// consecutive units of a row, so every (B, k*u) array is read and written coalesced. Gate
// blocks of a (B, G*u) row are in Keras order: SimpleRNN [a], LSTM [i f c o], GRU [z r h].
// All state and gate math is in the accumulate type A (float for float and __half, double
// for double); only the output sequence is stored in T.
//
// CELL (a template argument): Cell::simple_rnn, Cell::lstm, Cell::gru (reset_after) and
// Cell::gru_reset_before (reset before the matmul: its forward step runs
// gru_reset_gate_forward, a GEMM (r h) @ U_h, then rnn_step_forward). The activations are
// runtime int arguments holding an Activation (hard_sigmoid: relu6(a + 3) / 6). gpulayers
// reads both enums from this file by name (kernels.cuda_enum), so the enumerators are the
// layers' own names and their order is free.
//
// Masks (uint8 per batch row and step, has_mask = 0 for none): a masked step keeps h (and c)
// and outputs the carried h, or zero when zero_output != 0.
#include "common.cuh"

using gl::index_t;

enum class Cell : int { simple_rnn, lstm, gru, gru_reset_before };
enum class Activation : int { linear, tanh, sigmoid, relu, hard_sigmoid };

// Gate blocks per row of the pre-activations: SimpleRNN [a], LSTM [i f c o], GRU [z r h].
template <Cell CELL> constexpr int kGates = CELL == Cell::simple_rnn ? 1 : (CELL == Cell::lstm ? 4 : 3);

template <typename A> __device__ __forceinline__ A activate(int code, A a) {
    switch (static_cast<Activation>(code)) {
        case Activation::tanh: return tanh(a);
        case Activation::sigmoid: return (A)1 / ((A)1 + exp(-a));
        case Activation::relu: return a > (A)0 ? a : (A)0;
        case Activation::hard_sigmoid: return a <= (A)-3 ? (A)0 : (a >= (A)3 ? (A)1 : a / (A)6 + (A)0.5);
        case Activation::linear: default: return a;
    }
}

// d activate(a) / da, from the pre-activation a.
template <typename A> __device__ __forceinline__ A activation_grad(int code, A a) {
    switch (static_cast<Activation>(code)) {
        case Activation::tanh: { const A t = tanh(a); return (A)1 - t * t; }
        case Activation::sigmoid: { const A s = (A)1 / ((A)1 + exp(-a)); return s * ((A)1 - s); }
        case Activation::relu: return a > (A)0 ? (A)1 : (A)0;
        case Activation::hard_sigmoid: return (a > (A)-3 && a < (A)3) ? (A)1 / (A)6 : (A)0;
        case Activation::linear: default: return (A)1;
    }
}

#define ACC gl::acc_t<T>

// Forward step. xw: (B, G u) input projection of this step (input bias included);
// hu: the recurrent part, h_prev @ U (+ recurrent bias) -- (B, G u), or (B, u) = (r h) @ U_h
// for gru_reset_before. Saves pre (B, G u) pre-activations and extra (B, u): LSTM c',
// GRU h @ U_h + b_rec_h (Cell::gru). Writes h_out, c_out (LSTM) and the output o (B, u).
template <typename T, Cell CELL>
__global__ void rnn_step_forward(const ACC* __restrict__ xw, const ACC* __restrict__ hu,
                                 const ACC* __restrict__ h_prev, const ACC* __restrict__ c_prev,
                                 const unsigned char* __restrict__ mask, int has_mask, ACC* __restrict__ pre,
                                 ACC* __restrict__ extra, ACC* __restrict__ h_out, ACC* __restrict__ c_out,
                                 T* __restrict__ out, int B, int u, int act, int ract, int zero_output) {
    typedef ACC A;
    constexpr int G = kGates<CELL>;
    const index_t total = (index_t)B * u;
    GL_FOR_EACH(k, total) {
        const index_t b = k / u;
        const int j = (int)(k % u);
        const index_t row = b * G * u;  // start of this batch row in (B, G u) arrays
        const A h = h_prev[k];
        A h_new, c_new = 0;
        if (CELL == Cell::simple_rnn) {
            const A a = xw[row + j] + hu[row + j];
            pre[row + j] = a;
            h_new = activate(act, a);
        } else if (CELL == Cell::lstm) {
            A a[4];
            for (int g = 0; g < 4; ++g) {
                a[g] = xw[row + g * u + j] + hu[row + g * u + j];
                pre[row + g * u + j] = a[g];
            }
            const A i = activate(ract, a[0]), f = activate(ract, a[1]);
            const A cc = activate(act, a[2]), o = activate(ract, a[3]);
            c_new = f * c_prev[k] + i * cc;
            extra[k] = c_new;
            h_new = o * activate(act, c_new);
        } else if (CELL == Cell::gru) {
            const A zp = xw[row + j] + hu[row + j];
            const A rp = xw[row + u + j] + hu[row + u + j];
            const A inner_h = hu[row + 2 * u + j];
            const A hp = xw[row + 2 * u + j] + activate(ract, rp) * inner_h;
            pre[row + j] = zp;
            pre[row + u + j] = rp;
            pre[row + 2 * u + j] = hp;
            extra[k] = inner_h;
            const A z = activate(ract, zp);
            h_new = z * h + ((A)1 - z) * activate(act, hp);
        } else {  // Cell::gru_reset_before: z, r pre-activations saved by gru_reset_gate_forward
            const A hp = xw[row + 2 * u + j] + hu[k];
            pre[row + 2 * u + j] = hp;
            const A z = activate(ract, pre[row + j]);
            h_new = z * h + ((A)1 - z) * activate(act, hp);
        }
        const bool keep = has_mask && !mask[b];
        h_out[k] = keep ? h : h_new;
        if (CELL == Cell::lstm) c_out[k] = keep ? c_prev[k] : c_new;
        out[k] = gl::from_acc<T>(keep ? (zero_output ? (A)0 : h) : h_new);
    }
}

// GRU (reset before the matmul), first half of a forward step: z and r pre-activations
// from xw + hu (hu = h_prev @ U[:, :2u], (B, 2u)), saved in pre; rh = r * h_prev (B, u)
// feeds the GEMM (r h) @ U_h.
template <typename T>
__global__ void gru_reset_gate_forward(const ACC* __restrict__ xw, const ACC* __restrict__ hu,
                                       const ACC* __restrict__ h_prev, ACC* __restrict__ pre,
                                       ACC* __restrict__ rh, int B, int u, int ract) {
    const index_t total = (index_t)B * u;
    GL_FOR_EACH(k, total) {
        const index_t b = k / u;
        const int j = (int)(k % u);
        const index_t row = b * 3 * u;
        const ACC zp = xw[row + j] + hu[b * 2 * u + j];
        const ACC rp = xw[row + u + j] + hu[b * 2 * u + u + j];
        pre[row + j] = zp;
        pre[row + u + j] = rp;
        rh[k] = activate(ract, rp) * h_prev[k];
    }
}

// Backward step. d_out: gradient of this step's output (B, u); dh, dc: gradients of the
// step's resulting h and c coming from later steps (and the final-state gradients).
// Writes d_xw (B, G u) (gradient of the input-side pre-activations), d_inner (B, G u) (of
// the recurrent side, h @ U; only Cell::gru differs from d_xw), dh_direct (B, u): every part
// of d h_prev except the GEMM term d_inner @ U^T, and dc_prev (LSTM).
// Cell::gru_reset_before writes the z and h blocks only; gru_reset_gate_backward completes it.
template <typename T, Cell CELL>
__global__ void rnn_step_backward(const ACC* __restrict__ d_out, const ACC* __restrict__ pre,
                                  const ACC* __restrict__ extra, const ACC* __restrict__ h_prev,
                                  const ACC* __restrict__ c_prev, const unsigned char* __restrict__ mask,
                                  int has_mask, const ACC* __restrict__ dh, const ACC* __restrict__ dc,
                                  ACC* __restrict__ d_xw, ACC* __restrict__ d_inner, ACC* __restrict__ dh_direct,
                                  ACC* __restrict__ dc_prev, int B, int u, int act, int ract, int zero_output) {
    typedef ACC A;
    constexpr int G = kGates<CELL>;
    const index_t total = (index_t)B * u;
    GL_FOR_EACH(k, total) {
        const index_t b = k / u;
        const int j = (int)(k % u);
        const index_t row = b * G * u;
        const bool keep = has_mask && !mask[b];
        const A g = d_out[k];
        // A masked step passes dh (and, unless its output is zero, g) straight to h_prev.
        const A dh_new = keep ? (A)0 : dh[k] + g;
        A direct = keep ? dh[k] + (zero_output ? (A)0 : g) : (A)0;
        if (CELL == Cell::simple_rnn) {
            const A da = dh_new * activation_grad(act, pre[row + j]);
            d_xw[row + j] = da;
            d_inner[row + j] = da;
        } else if (CELL == Cell::lstm) {
            const A ai = pre[row + j], af = pre[row + u + j], ac = pre[row + 2 * u + j], ao = pre[row + 3 * u + j];
            const A c_new = extra[k];
            const A i = activate(ract, ai), f = activate(ract, af), cc = activate(act, ac), o = activate(ract, ao);
            const A dc_new = (keep ? (A)0 : dc[k]) + dh_new * o * activation_grad(act, c_new);
            const A d[4] = {dc_new * cc * activation_grad(ract, ai), dc_new * c_prev[k] * activation_grad(ract, af),
                            dc_new * i * activation_grad(act, ac),
                            dh_new * activate(act, c_new) * activation_grad(ract, ao)};
            for (int q = 0; q < 4; ++q) {
                d_xw[row + q * u + j] = d[q];
                d_inner[row + q * u + j] = d[q];
            }
            dc_prev[k] = (keep ? dc[k] : (A)0) + dc_new * f;
        } else {
            const A zp = pre[row + j], rp = pre[row + u + j], hp = pre[row + 2 * u + j];
            const A z = activate(ract, zp);
            const A dz = dh_new * (h_prev[k] - activate(act, hp)) * activation_grad(ract, zp);
            const A dhp = dh_new * ((A)1 - z) * activation_grad(act, hp);
            direct += dh_new * z;
            d_xw[row + j] = dz;
            d_xw[row + 2 * u + j] = dhp;
            if (CELL == Cell::gru) {
                const A r = activate(ract, rp);
                const A dr = dhp * extra[k] * activation_grad(ract, rp);
                d_xw[row + u + j] = dr;
                d_inner[row + j] = dz;
                d_inner[row + u + j] = dr;
                d_inner[row + 2 * u + j] = dhp * r;
            }
        }
        dh_direct[k] = direct;
    }
}

// GRU (reset before the matmul), second half of a backward step: d_rh = d(r h) (B, u) from
// the GEMM d_hp @ U_h^T gives the r block of d_xw and adds d_rh * r to dh_direct.
template <typename T>
__global__ void gru_reset_gate_backward(const ACC* __restrict__ d_rh, const ACC* __restrict__ pre,
                                        const ACC* __restrict__ h_prev, ACC* __restrict__ d_xw,
                                        ACC* __restrict__ dh_direct, int B, int u, int ract) {
    const index_t total = (index_t)B * u;
    GL_FOR_EACH(k, total) {
        const index_t b = k / u;
        const int j = (int)(k % u);
        const index_t row = b * 3 * u;
        const ACC rp = pre[row + u + j];
        d_xw[row + u + j] = d_rh[k] * h_prev[k] * activation_grad(ract, rp);
        dh_direct[k] += d_rh[k] * activate(ract, rp);
    }
}
