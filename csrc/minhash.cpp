// Hot loops of corpus deduplication (megactllm.clean): MinHash signatures over character
// n-grams, LSH band hashes, union-find over candidate pairs, and bounded edit distance for
// similar-line removal. Text is read as Unicode code points, so Chinese (no spaces) is
// shingled by characters, never by whitespace-separated words.
//
// The heavy functions copy what they need out of Python objects while holding the GIL and
// then release it, so a thread pool (or the `threads` argument) runs them in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace {

inline uint64_t splitmix64(uint64_t &state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Murmur3's 64-bit finaliser: spreads a polynomial rolling hash over all bits.
inline uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDULL;
  k ^= k >> 33;
  k *= 0xC4CEB9FE1A85EC53ULL;
  k ^= k >> 33;
  return k;
}

// Code points of a str, read straight from CPython's compact representation.
std::vector<uint32_t> code_points(PyObject *obj) {
  if (!PyUnicode_Check(obj)) throw std::invalid_argument("expected str");
  if (PyUnicode_READY(obj) != 0) throw py::error_already_set();
  Py_ssize_t n = PyUnicode_GET_LENGTH(obj);
  int kind = PyUnicode_KIND(obj);
  const void *data = PyUnicode_DATA(obj);
  std::vector<uint32_t> out(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) out[i] = PyUnicode_READ(kind, data, i);
  return out;
}

std::vector<std::vector<uint32_t>> texts_to_code_points(const py::list &texts) {
  std::vector<std::vector<uint32_t>> docs;
  docs.reserve(texts.size());
  for (py::handle h : texts) docs.push_back(code_points(h.ptr()));
  return docs;
}

struct Permutations {
  // h_i(x) = ((a_i * x + b_i) mod 2^64) >> 32 on a 32-bit key x: Dietzfelbinger's
  // multiply-shift, a 2-universal family with no modulo. The 64-bit constants are kept as
  // 32-bit halves so the loop runs in 32-bit vector lanes (see signature_one).
  std::vector<uint32_t> a_hi, a_lo, b_hi, b_lo;
  explicit Permutations(int num_perm, uint64_t seed)
      : a_hi(num_perm), a_lo(num_perm), b_hi(num_perm), b_lo(num_perm) {
    uint64_t state = seed;
    for (int i = 0; i < num_perm; ++i) {
      const uint64_t a = splitmix64(state) | 1ULL, b = splitmix64(state);
      a_hi[i] = static_cast<uint32_t>(a >> 32);
      a_lo[i] = static_cast<uint32_t>(a);
      b_hi[i] = static_cast<uint32_t>(b >> 32);
      b_lo[i] = static_cast<uint32_t>(b);
    }
  }
  size_t size() const { return a_hi.size(); }
};

constexpr uint64_t kRollBase = 0x100000001B3ULL;  // odd multiplier for the rolling hash

// setup.py compiles for the baseline ISA (SSE2: two 64-bit lanes); clones for AVX2 and
// AVX-512 are picked at load time on CPUs that have them, with no build flag.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MINHASH_CLONES __attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#else
#define MINHASH_CLONES
#endif

MINHASH_CLONES
void signature_one(const std::vector<uint32_t> &cp, int ngram, const Permutations &perm,
                   uint32_t *__restrict out) {
  const int num_perm = static_cast<int>(perm.size());
  std::fill(out, out + num_perm, 0xFFFFFFFFu);
  const size_t n = cp.size();
  if (n == 0) return;  // empty text: all-max signature, the caller keeps it out of LSH
  // A text shorter than one n-gram is a single shingle of the whole text.
  const size_t w = std::min<size_t>(static_cast<size_t>(ngram), n);
  uint64_t top = 1;  // kRollBase^(w-1), to drop the leaving character
  for (size_t i = 1; i < w; ++i) top *= kRollBase;
  uint64_t h = 0;
  for (size_t i = 0; i < w; ++i) h = h * kRollBase + cp[i] + 1;
  const uint32_t *ah = perm.a_hi.data(), *al = perm.a_lo.data();
  const uint32_t *bh = perm.b_hi.data(), *bl = perm.b_lo.data();
  for (size_t start = 0;; ++start) {
    const uint32_t x = static_cast<uint32_t>(fmix64(h) >> 32);
    for (int p = 0; p < num_perm; ++p) {
      // Bits 32..63 of a*x + b, from 32-bit halves: a_hi*x + b_hi + carry-out of a_lo*x + b_lo.
      const uint64_t low = static_cast<uint64_t>(al[p]) * x + bl[p];
      const uint32_t v = ah[p] * x + bh[p] + static_cast<uint32_t>(low >> 32);
      out[p] = v < out[p] ? v : out[p];
    }
    if (start + w >= n) break;
    h = (h - (cp[start] + 1ULL) * top) * kRollBase + cp[start + w] + 1;
  }
}

template <typename F>
void parallel_for(size_t n, int threads, F fn) {
  if (threads <= 1 || n < 2) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  const size_t t = std::min<size_t>(static_cast<size_t>(threads), n);
  std::vector<std::thread> pool;
  for (size_t k = 0; k < t; ++k) {
    pool.emplace_back([&, k] {
      for (size_t i = k; i < n; i += t) fn(i);
    });
  }
  for (auto &th : pool) th.join();
}

py::array_t<uint32_t> signatures(const py::list &texts, int ngram, int num_perm, uint64_t seed,
                                 int threads) {
  if (ngram < 1) throw std::invalid_argument("ngram must be >= 1");
  if (num_perm < 1) throw std::invalid_argument("num_perm must be >= 1");
  auto docs = texts_to_code_points(texts);
  const size_t n = docs.size();
  py::array_t<uint32_t> result({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(num_perm)});
  uint32_t *out = result.mutable_data();
  Permutations perm(num_perm, seed);
  {
    py::gil_scoped_release release;
    parallel_for(n, threads, [&](size_t i) {
      signature_one(docs[i], ngram, perm, out + i * static_cast<size_t>(num_perm));
    });
  }
  return result;
}

py::array_t<uint64_t> band_hashes(py::array_t<uint32_t, py::array::c_style | py::array::forcecast> sigs,
                                  int bands, int rows) {
  if (sigs.ndim() != 2) throw std::invalid_argument("signatures must be a 2-D array");
  const size_t n = sigs.shape(0), num_perm = sigs.shape(1);
  if (bands < 1 || rows < 1 || static_cast<size_t>(bands) * rows > num_perm)
    throw std::invalid_argument("bands * rows must be between 1 and the number of permutations (" +
                                std::to_string(num_perm) + ")");
  py::array_t<uint64_t> result({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(bands)});
  const uint32_t *s = sigs.data();
  uint64_t *out = result.mutable_data();
  {
    py::gil_scoped_release release;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t *row = s + i * num_perm;
      for (int bnd = 0; bnd < bands; ++bnd) {
        uint64_t h = fmix64(0x5851F42D4C957F2DULL + static_cast<uint64_t>(bnd));
        for (int r = 0; r < rows; ++r) h = fmix64(h ^ (row[bnd * rows + r] + 0x9E3779B97F4A7C15ULL));
        out[i * bands + bnd] = h;
      }
    }
  }
  return result;
}

// Union-find over n items and edge lists; every item's root is the smallest index of its
// component, so "keep the root" keeps the first document of each cluster, deterministically.
py::array_t<int64_t> union_find(int64_t n, py::array_t<int64_t, py::array::c_style | py::array::forcecast> a,
                                py::array_t<int64_t, py::array::c_style | py::array::forcecast> b) {
  if (a.size() != b.size()) throw std::invalid_argument("edge arrays differ in length");
  py::array_t<int64_t> result(n);
  int64_t *parent = result.mutable_data();
  const int64_t *pa = a.data(), *pb = b.data();
  const size_t m = a.size();
  for (size_t i = 0; i < m; ++i)
    if (pa[i] < 0 || pa[i] >= n || pb[i] < 0 || pb[i] >= n)
      throw std::out_of_range("edge " + std::to_string(i) + " names an item outside [0, n)");
  {
    py::gil_scoped_release release;
    std::iota(parent, parent + n, int64_t{0});
    auto find = [&](int64_t x) {
      while (parent[x] != x) {
        parent[x] = parent[parent[x]];  // path halving
        x = parent[x];
      }
      return x;
    };
    for (size_t i = 0; i < m; ++i) {
      int64_t ra = find(pa[i]), rb = find(pb[i]);
      if (ra == rb) continue;
      if (ra < rb) parent[rb] = ra; else parent[ra] = rb;
    }
    for (int64_t i = 0; i < n; ++i) parent[i] = find(i);
  }
  return result;
}

// Levenshtein distance of a and b if it is <= k, else k + 1; a band of width 2k+1 keeps it
// O(len * k) instead of O(len^2).
size_t bounded_edit_distance(const std::vector<uint32_t> &a, const std::vector<uint32_t> &b, size_t k) {
  const size_t n = a.size(), m = b.size();
  if ((n > m ? n - m : m - n) > k) return k + 1;
  const size_t INF = k + 1;
  std::vector<size_t> prev(m + 1), cur(m + 1);
  for (size_t j = 0; j <= m; ++j) prev[j] = j <= k ? j : INF;
  for (size_t i = 1; i <= n; ++i) {
    const size_t lo = i > k ? i - k : 1, hi = std::min(m, i + k);
    std::fill(cur.begin(), cur.end(), INF);
    cur[0] = i <= k ? i : INF;
    size_t row_min = cur[0];
    for (size_t j = lo; j <= hi; ++j) {
      size_t v = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      v = std::min(v, prev[j] + 1);
      v = std::min(v, cur[j - 1] + 1);
      cur[j] = std::min(v, INF);
      row_min = std::min(row_min, cur[j]);
    }
    if (row_min > k) return INF;
    std::swap(prev, cur);
  }
  return std::min(prev[m], INF);
}

// For each line, whether it repeats (within max_ratio * length edits) an earlier kept line.
// Lines of min_len characters or fewer are never marked. Exact repeats are found anywhere
// through a hash set; edit distance is tried against the last `window` kept lines only, so a
// giant document costs time linear in its lines rather than quadratic.
std::vector<bool> similar_lines(const py::list &lines, double max_ratio, size_t min_len, size_t window) {
  auto cps = texts_to_code_points(lines);
  std::vector<bool> dup(cps.size(), false);
  {
    py::gil_scoped_release release;
    std::vector<size_t> kept;
    std::unordered_map<uint64_t, size_t> seen;  // line hash -> index of a kept line
    for (size_t i = 0; i < cps.size(); ++i) {
      const size_t len = cps[i].size();
      if (len <= min_len) continue;
      uint64_t h = 0;
      for (uint32_t c : cps[i]) h = fmix64(h * kRollBase + c + 1);
      auto it = seen.find(h);
      bool is_dup = it != seen.end() && cps[it->second] == cps[i];
      const size_t first = kept.size() > window ? kept.size() - window : 0;
      for (size_t q = kept.size(); !is_dup && q-- > first;) {
        const size_t j = kept[q];
        const size_t longer = std::max(len, cps[j].size());
        const size_t k = static_cast<size_t>(max_ratio * static_cast<double>(longer));
        is_dup = bounded_edit_distance(cps[i], cps[j], k) <= k;
      }
      if (is_dup) {
        dup[i] = true;
      } else {
        kept.push_back(i);
        seen.emplace(h, i);
      }
    }
  }
  return dup;
}

size_t py_bounded_edit_distance(const py::str &a, const py::str &b, size_t k) {
  auto ca = code_points(a.ptr()), cb = code_points(b.ptr());
  return bounded_edit_distance(ca, cb, k);
}

// Characters inside the union of spans [i, i+n) of the selected windows.
size_t covered_chars(const std::vector<char> &selected, size_t n) {
  size_t covered = 0, end = 0;
  for (size_t i = 0; i < selected.size(); ++i) {
    if (!selected[i]) continue;
    covered += i + n - std::max(i, end);
    end = i + n;
  }
  return covered;
}

// For each n: (share of characters inside occurrences of the most frequent n-gram, share
// inside n-grams occurring more than once). Ties for most frequent go to the n-gram seen
// first, as with Python's Counter.most_common.
std::vector<std::pair<double, double>> ngram_coverage(const py::str &text, const std::vector<int> &ns) {
  auto cp = code_points(text.ptr());
  std::vector<std::pair<double, double>> result;
  py::gil_scoped_release release;
  const size_t len = cp.size();
  for (int n_int : ns) {
    if (n_int < 1) throw std::invalid_argument("n-gram size must be >= 1");
    const size_t n = static_cast<size_t>(n_int);
    if (len < n) {
      result.emplace_back(0.0, 0.0);
      continue;
    }
    const size_t windows = len - n + 1;
    std::vector<std::pair<uint64_t, uint32_t>> keyed(windows);
    uint64_t top = 1;
    for (size_t i = 1; i < n; ++i) top *= kRollBase;
    uint64_t h = 0;
    for (size_t i = 0; i < n; ++i) h = h * kRollBase + cp[i] + 1;
    for (size_t i = 0;; ++i) {
      keyed[i] = {fmix64(h ^ n), static_cast<uint32_t>(i)};
      if (i + 1 == windows) break;
      h = (h - (cp[i] + 1ULL) * top) * kRollBase + cp[i + n] + 1;
    }
    std::sort(keyed.begin(), keyed.end());
    std::vector<char> dup(windows, 0), best_sel(windows, 0);
    size_t best_count = 0, best_first = SIZE_MAX, best_begin = 0;
    for (size_t g = 0; g < windows;) {
      size_t e = g;
      while (e < windows && keyed[e].first == keyed[g].first) ++e;
      const size_t count = e - g, first = keyed[g].second;  // sorted by index within a group
      if (count > 1)
        for (size_t k = g; k < e; ++k) dup[keyed[k].second] = 1;
      if (count > best_count || (count == best_count && first < best_first)) {
        best_count = count;
        best_first = first;
        best_begin = g;
      }
      g = e;
    }
    for (size_t k = best_begin; k < best_begin + best_count; ++k) best_sel[keyed[k].second] = 1;
    result.emplace_back(static_cast<double>(covered_chars(best_sel, n)) / len,
                        static_cast<double>(covered_chars(dup, n)) / len);
  }
  return result;
}

// ---------------------------------------------------------------------------------------
// Word segmentation for the word-based rules (mean word length, words per line): the
// maximum-probability path over a prefix dictionary, the method of jieba's cut(HMM=False),
// on jieba's own dictionary (passed in from Python), about 10x faster than jieba in Python.
class Segmenter {
 public:
  Segmenter(const py::dict &freq, double total) : log_total_(std::log(total)) {
    freq_.reserve(freq.size() * 2);
    for (auto item : freq) {
      auto cp = code_points(item.first.ptr());
      uint64_t h = 0;
      for (uint32_t c : cp) h = extend(h, c);
      freq_[h] = item.second.cast<int64_t>();
    }
  }

  // End offsets (in code points) of the tokens of text.
  std::vector<int64_t> cut(const py::str &text) const {
    auto cp = code_points(text.ptr());
    std::vector<int64_t> ends;
    py::gil_scoped_release release;
    size_t i = 0;
    while (i < cp.size()) {
      if (!in_block(cp[i])) {  // outside dictionary blocks every character is its own token
        ends.push_back(static_cast<int64_t>(++i));
        continue;
      }
      size_t j = i;
      while (j < cp.size() && in_block(cp[j])) ++j;
      cut_block(cp, i, j, ends);
      i = j;
    }
    return ends;
  }

 private:
  // Dictionary keys are 64-bit polynomial hashes of the word, extended one character at a
  // time while walking the DAG (a collision would need two of ~500k words to meet in 2^64).
  static uint64_t extend(uint64_t h, uint32_t c) { return fmix64(h * kRollBase + c + 1); }

  // Characters that jieba segments with its dictionary: CJK U+4E00..U+9FD5, ASCII letters
  // and digits, and + # & . _ % -.
  static bool in_block(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FD5) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '+' || c == '#' || c == '&' || c == '.' || c == '_' ||
           c == '%' || c == '-';
  }
  static bool is_ascii_alnum(uint32_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  }

  void cut_block(const std::vector<uint32_t> &cp, size_t lo, size_t hi, std::vector<int64_t> &ends) const {
    const size_t n = hi - lo;
    // DAG: for each start, (end, count) of the dictionary words beginning there, or the
    // single character (count 0, scored as 1) when none is.
    std::vector<std::vector<std::pair<size_t, int64_t>>> dag(n);
    for (size_t k = 0; k < n; ++k) {
      uint64_t h = 0;
      for (size_t e = k; e < n; ++e) {
        h = extend(h, cp[lo + e]);
        auto it = freq_.find(h);
        if (it == freq_.end()) break;  // not even a prefix of a word
        if (it->second > 0) dag[k].emplace_back(e, it->second);
      }
      if (dag[k].empty()) dag[k].emplace_back(k, 0);
    }
    // Best route from the right; ties go to the longer word, as in jieba.
    std::vector<std::pair<double, size_t>> route(n + 1, {0.0, 0});
    for (size_t idx = n; idx-- > 0;) {
      std::pair<double, size_t> best{0.0, 0};
      bool first = true;
      for (auto [x, f] : dag[idx]) {
        std::pair<double, size_t> cand{std::log(static_cast<double>(f > 0 ? f : 1)) - log_total_ + route[x + 1].first, x};
        if (first || cand > best) best = cand;
        first = false;
      }
      route[idx] = best;
    }
    // Runs of single ASCII letters/digits merge into one token.
    bool buf = false;
    for (size_t x = 0; x < n;) {
      const size_t y = route[x].second + 1;
      if (y - x == 1 && is_ascii_alnum(cp[lo + x])) {
        buf = true;
      } else {
        if (buf) ends.push_back(static_cast<int64_t>(lo + x));
        buf = false;
        ends.push_back(static_cast<int64_t>(lo + y));
      }
      x = y;
    }
    if (buf) ends.push_back(static_cast<int64_t>(hi));
  }

  std::unordered_map<uint64_t, int64_t> freq_;
  double log_total_;
};

}  // namespace

PYBIND11_MODULE(_minhash, m) {
  m.doc() = "MinHash over character n-grams, LSH band hashes, union-find, bounded edit distance";
  m.def("signatures", &signatures, py::arg("texts"), py::arg("ngram") = 13, py::arg("num_perm") = 128,
        py::arg("seed") = 1, py::arg("threads") = 1,
        "uint32 array (len(texts), num_perm): MinHash of each text's character n-grams");
  m.def("band_hashes", &band_hashes, py::arg("signatures"), py::arg("bands"), py::arg("rows"),
        "uint64 array (n, bands): one hash per LSH band of `rows` signature values");
  m.def("union_find", &union_find, py::arg("n"), py::arg("a"), py::arg("b"),
        "int64 array (n,): component root (smallest member index) of each item");
  m.def("bounded_edit_distance", &py_bounded_edit_distance, py::arg("a"), py::arg("b"), py::arg("k"),
        "Levenshtein distance if <= k, else k + 1");
  m.def("similar_lines", &similar_lines, py::arg("lines"), py::arg("max_ratio") = 0.1,
        py::arg("min_len") = 15, py::arg("window") = 64,
        "per line: True where it nearly repeats an earlier kept line");
  py::class_<Segmenter>(m, "Segmenter")
      .def(py::init<const py::dict &, double>(), py::arg("freq"), py::arg("total"),
           "freq: jieba's prefix dictionary (word -> count, prefixes -> 0); total: sum of counts")
      .def("cut", &Segmenter::cut, py::arg("text"), "end offsets of the tokens of text");
  m.def("ngram_coverage", &ngram_coverage, py::arg("text"), py::arg("ns"),
        "per n: (top n-gram character coverage, duplicated n-gram character coverage)");
}
