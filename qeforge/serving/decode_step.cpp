// The lean decoder's one-token step in C++ (decoder.py: DecodeStep): every layer, the final norm and the
// lm_head in one call, for rows that each add one token to their KV cache.
//
// Why: a Python step of SmolLM2-135M costs ~1,500 eager ops (~6 ms of a 20 ms step on 2 cores) around
// the 121 GEMMs that read the weights; here the GEMMs are the same oneDNN (or int8) calls and what lies
// between them (RMSNorm, LoRA B, RoPE, the cache write, attention, SiLU, the residual adds) is a few
// loops per layer. The numbers are decoder.py's: the same weights, formulas and fp32 accumulation,
// summed in another order (logits agree to ~1e-5 of their scale; tests/test_decoder.py checks).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
// The hot loops get an AVX-512 and an AVX2 body chosen at load time: one build serves any x86 CPU.
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

namespace {

VECTOR_CLONES void axpy(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

VECTOR_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

// transformers' RMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * weight.
VECTOR_CLONES void rms_norm(float* out, const float* x, const float* weight, int64_t n, float eps) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * weight[i];
}

// e^x as Cephes' expf: 2^n * e^r with r = x - n ln2 (ln2 split in two so r is exact), a degree-7
// polynomial for e^r; relative error < 2e-7, and it vectorizes (std::exp does not without -ffast-math).
// x below -87 gives ~1e-38, not 0: callers that mean 0 (masked positions) say so themselves.
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float t = x * 1.44269504f;
  const int32_t n = int32_t(t + (t >= 0.f ? 0.5f : -0.5f));
  const float r = x - float(n) * 0.693359375f + float(n) * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

VECTOR_CLONES void silu_mul(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.f + exp_poly(-gate[i])) * up[i];
}

// p[t] = exp(p[t] - top) where p[t] is finite, 0 where it is -inf (a masked position); returns the sum.
VECTOR_CLONES float softmax_numerators(float* p, int64_t n, float top) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < n; t++) {
    const float e = p[t] == -std::numeric_limits<float>::infinity() ? 0.f : exp_poly(p[t] - top);
    p[t] = e;
    sum += e;
  }
  return sum;
}

// One FusedLinear (decoder.py): x [rows, in] -> z = x @ W_ext ([rows, out + R]: the base outputs, then
// every adapter's LoRA A ranks); y = z[:, :out] + z[:, out + span] @ B[span] per row, span = its adapter's.
struct Linear {
  at::Tensor packed, bias, weight, int8, scales, lora_b;  // each may be undefined; weight [out + R, in]
  std::vector<int64_t> spans;  // per slot: start, end (end == start: no LoRA for that slot)
  int64_t out;

  at::Tensor operator()(const at::Tensor& x, const std::vector<int64_t>& slots) const {
    at::Tensor z;
    if (int8.defined()) {
      z = at::_weight_int8pack_mm(x.to(at::kBFloat16), int8, scales).to(at::kFloat);
      if (bias.defined()) z.add_(bias);
    } else if (packed.defined()) {
      static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
      std::vector<c10::IValue> stack{x, packed, bias.defined() ? c10::IValue(bias) : c10::IValue(),
                                     std::string("none"), c10::List<std::optional<at::Scalar>>(), std::string("")};
      op.callBoxed(&stack);
      z = stack[0].toTensor();
    } else {
      z = bias.defined() ? at::addmm(bias, x, weight.t()) : at::mm(x, weight.t());
    }
    const int64_t rows = x.size(0), width = z.size(1);
    at::Tensor y = z.narrow(1, 0, out).contiguous();
    if (!lora_b.defined()) return y;
    const float* zp = z.data_ptr<float>();
    const float* bp = lora_b.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    // Columns in blocks; each block walks its rows' rank rows of B (B: [R, out]). Threads only for a
    // batch: one row's r=16 update of a 3,072-wide output is ~50k multiply-adds, a few microseconds,
    // less than waking the other thread.
    int64_t work = 0;
    for (int64_t r = 0; r < rows; r++) work += (spans[2 * slots[r] + 1] - spans[2 * slots[r]]) * out;
    at::parallel_for(0, out, work < (1 << 18) ? out : 256, [&](int64_t lo, int64_t hi) {
      for (int64_t r = 0; r < rows; r++) {
        const int64_t start = spans[2 * slots[r]], end = spans[2 * slots[r] + 1];
        for (int64_t j = start; j < end; j++)
          axpy(yp + r * out + lo, bp + j * out + lo, zp[r * width + out + j], hi - lo);
      }
    });
    return y;
  }
};

struct Layer {
  at::Tensor in_norm, post_norm;
  Linear qkv, o, gate_up, down;
};

class DecodeStep {
 public:
  DecodeStep(int64_t heads, int64_t kv_heads, int64_t head_dim, double scale, double eps)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), scale_(scale), eps_(eps) {}

  // Linears in the order layer by layer (qkv, o, gate_up, down), then the lm_head; norms likewise.
  void add_linear(std::optional<at::Tensor> packed, std::optional<at::Tensor> bias, std::optional<at::Tensor> weight,
                  std::optional<at::Tensor> int8, std::optional<at::Tensor> scales, std::optional<at::Tensor> lora_b,
                  std::vector<int64_t> spans, int64_t out) {
    linears_.push_back({packed.value_or(at::Tensor()), bias.value_or(at::Tensor()), weight.value_or(at::Tensor()),
                        int8.value_or(at::Tensor()), scales.value_or(at::Tensor()), lora_b.value_or(at::Tensor()),
                        std::move(spans), out});
  }
  void add_norm(at::Tensor weight) { norms_.push_back(weight.contiguous()); }

  // h [rows, hidden]: the new tokens' embeddings; cos, sin [rows, rotary dim]; mask [rows, length + 1]
  // (int64, 0 on left pads); keys/values per layer [rows, kv_heads, capacity, head_dim] with room at
  // `length`, written there. Returns the logits [rows, vocab].
  at::Tensor forward(at::Tensor h, at::Tensor cos, at::Tensor sin, at::Tensor mask, std::vector<at::Tensor> keys,
                     std::vector<at::Tensor> values, int64_t length, std::vector<int64_t> slots) {
    TORCH_CHECK(h.dim() == 2 && h.scalar_type() == at::kFloat && h.is_contiguous(), "h: [rows, hidden] fp32");
    TORCH_CHECK(linears_.size() == 4 * keys.size() + 1 && norms_.size() == 2 * keys.size() + 1,
                "the step holds ", linears_.size(), " linears and ", norms_.size(), " norms for ", keys.size(), " layers");
    const int64_t rows = h.size(0), hidden = h.size(1);
    cos = cos.contiguous();
    sin = sin.contiguous();
    mask = mask.contiguous();
    for (size_t i = 0; i < keys.size(); i++) {
      const Linear* lin = &linears_[4 * i];
      at::Tensor x = norm(h, norms_[2 * i]);
      at::Tensor qkv = lin[0](x, slots);
      h.add_(lin[1](attend(qkv, cos, sin, mask, keys[i], values[i], length), slots));
      x = norm(h, norms_[2 * i + 1]);
      at::Tensor gate_up = lin[2](x, slots);
      const int64_t inter = gate_up.size(1) / 2;
      at::Tensor act = at::empty({rows, inter}, h.options());
      for (int64_t r = 0; r < rows; r++) {
        const float* g = gate_up.data_ptr<float>() + r * 2 * inter;
        silu_mul(act.data_ptr<float>() + r * inter, g, g + inter, inter);
      }
      h.add_(lin[3](act, slots));
    }
    (void)hidden;
    return linears_.back()(norm(h, norms_.back()), slots);
  }

 private:
  at::Tensor norm(const at::Tensor& h, const at::Tensor& weight) const {
    const int64_t rows = h.size(0), n = h.size(1);
    at::Tensor out = at::empty_like(h);
    for (int64_t r = 0; r < rows; r++)
      rms_norm(out.data_ptr<float>() + r * n, h.data_ptr<float>() + r * n, weight.data_ptr<float>(), n, eps_);
    return out;
  }

  // RoPE on q and k (transformers' rotate_half form, partial rotary included), k and v into the cache at
  // `length`, then softmax(q k^T * scale) v over the row's unmasked positions, query heads grouped over
  // their KV head. Returns [rows, heads * head_dim].
  at::Tensor attend(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                    at::Tensor& keys, at::Tensor& values, int64_t length) const {
    const int64_t rows = qkv.size(0), d = head_dim_, rot = cos.size(1), half = rot / 2, total = length + 1;
    const int64_t width = qkv.size(1), groups = heads_ / kv_heads_, capacity = keys.size(2);
    TORCH_CHECK(keys.is_contiguous() && values.is_contiguous() && capacity > length, "caches: contiguous, with room");
    at::Tensor q = at::empty({rows, heads_, d}, qkv.options());
    float* qp = q.data_ptr<float>();
    const float* src = qkv.data_ptr<float>();
    float* kp = keys.data_ptr<float>();
    float* vp = values.data_ptr<float>();
    const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
    for (int64_t r = 0; r < rows; r++) {
      for (int64_t head = 0; head < heads_ + 2 * kv_heads_; head++) {
        const float* x = src + r * width + head * d;
        float* dst = head < heads_ ? qp + (r * heads_ + head) * d
                                   : (head < heads_ + kv_heads_ ? kp : vp) +
                                         ((r * kv_heads_ + (head - heads_) % kv_heads_) * capacity + length) * d;
        if (head >= heads_ + kv_heads_) {  // v: as it is
          std::copy(x, x + d, dst);
          continue;
        }
        const float *c = cp + r * rot, *s = sp + r * rot;
        for (int64_t j = 0; j < half; j++) {
          dst[j] = x[j] * c[j] + (-x[j + half]) * s[j];
          dst[j + half] = x[j + half] * c[j + half] + x[j] * s[j + half];
        }
        std::copy(x + rot, x + d, dst + rot);
      }
    }
    at::Tensor out = at::zeros({rows, heads_ * d}, qkv.options());
    float* op = out.data_ptr<float>();
    const int64_t* mp = mask.data_ptr<int64_t>();
    const float scale = float(scale_);
    // One task per (row, KV head): its `groups` query heads read the KV head's keys and values once.
    // Threads only when there is enough of it (one row: 3 KV heads x ~100 positions, ~10 microseconds).
    const int64_t tasks = rows * kv_heads_;
    at::parallel_for(0, tasks, tasks * groups * total * d < (1 << 16) ? tasks : 1, [&](int64_t lo, int64_t hi) {
      std::vector<float> p(groups * total);
      for (int64_t task = lo; task < hi; task++) {
        const int64_t r = task / kv_heads_, kv = task % kv_heads_;
        const float* kb = kp + (r * kv_heads_ + kv) * capacity * d;
        const float* vb = vp + (r * kv_heads_ + kv) * capacity * d;
        const int64_t* m = mp + r * total;
        for (int64_t g = 0; g < groups; g++) {
          const int64_t head = kv * groups + g;
          const float* qv = qp + (r * heads_ + head) * d;
          float* pg = p.data() + g * total;
          float top = -std::numeric_limits<float>::infinity();
          for (int64_t t = 0; t < total; t++) {
            pg[t] = m[t] ? dot(qv, kb + t * d, d) * scale : -std::numeric_limits<float>::infinity();
            top = std::max(top, pg[t]);
          }
          const float inv = 1.f / softmax_numerators(pg, total, top);
          float* o = op + r * heads_ * d + head * d;
          for (int64_t t = 0; t < total; t++)
            if (pg[t] > 0.f) axpy(o, vb + t * d, pg[t] * inv, d);
        }
      }
    });
    return out;
  }

  int64_t heads_, kv_heads_, head_dim_;
  double scale_, eps_;
  std::vector<Linear> linears_;
  std::vector<at::Tensor> norms_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<DecodeStep>(m, "DecodeStep")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, double>())
      .def("add_linear", &DecodeStep::add_linear)
      .def("add_norm", &DecodeStep::add_norm)
      .def("forward", &DecodeStep::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
