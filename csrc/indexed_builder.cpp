// Megatron indexed-dataset (.bin/.idx) writer and merger.
//
// .idx layout (megatron.core.datasets.indexed_dataset, byte for byte):
//   "MMIDIDX\0\0" | u64 version=1 | u8 dtype code | u64 sequence count | u64 document-index count
//   | i32 lengths[seq] | i64 byte pointers[seq] | i64 document indices[doc+1] (starting at 0)
// .bin is the token array, nothing else.
//
// Memory does not grow with the number of documents: sequence lengths and document indices are
// spilled to side files while the .bin streams, and the .idx is assembled from them at the end.
// Crash safety: everything is written under "*.tmp" names; finalize() renames the .bin first and
// the .idx last, so a killed writer leaves either the previous dataset or no .idx at all.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace py = pybind11;

namespace {

const char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
const size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;
const size_t kCopyBlock = 4 << 20;

// Megatron's DType codes: only the integer ones make sense for tokens.
int itemsize_of(int code) {
  switch (code) {
    case 1: case 2: return 1;   // uint8, int8
    case 3: case 8: return 2;   // int16, uint16
    case 4: return 4;           // int32
    case 5: return 8;           // int64
    default:
      throw std::invalid_argument("unsupported token dtype code " + std::to_string(code) +
                                  " (expected 1,2,3,4,5 or 8: uint8,int8,int16,int32,int64,uint16)");
  }
}

void range_of(int code, int64_t* lo, int64_t* hi) {
  switch (code) {
    case 1: *lo = 0; *hi = 255; break;
    case 2: *lo = -128; *hi = 127; break;
    case 3: *lo = -32768; *hi = 32767; break;
    case 8: *lo = 0; *hi = 65535; break;
    case 4: *lo = std::numeric_limits<int32_t>::min(); *hi = std::numeric_limits<int32_t>::max(); break;
    default: *lo = std::numeric_limits<int64_t>::min(); *hi = std::numeric_limits<int64_t>::max();
  }
}

std::string errno_text() { return std::string(std::strerror(errno)); }

// A FILE* with a large buffer that throws with the path on any failure.
class OutFile {
 public:
  OutFile() = default;
  void open(const std::string& path) {
    path_ = path;
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) throw std::runtime_error("cannot create " + path + ": " + errno_text());
    buf_.resize(1 << 20);
    std::setvbuf(f_, buf_.data(), _IOFBF, buf_.size());
  }
  void write(const void* data, size_t n) {
    if (n && std::fwrite(data, 1, n, f_) != n) throw std::runtime_error("write to " + path_ + " failed: " + errno_text());
  }
  void close(bool sync) {
    if (!f_) return;
    bool ok = std::fflush(f_) == 0;
    if (ok && sync) ok = ::fsync(fileno(f_)) == 0;
    ok = (std::fclose(f_) == 0) && ok;
    f_ = nullptr;
    if (!ok) throw std::runtime_error("closing " + path_ + " failed: " + errno_text());
  }
  void discard() {
    if (f_) std::fclose(f_);
    f_ = nullptr;
    std::remove(path_.c_str());
  }
  bool is_open() const { return f_ != nullptr; }
  const std::string& path() const { return path_; }
  ~OutFile() { if (f_) std::fclose(f_); }

 private:
  std::string path_;
  FILE* f_ = nullptr;
  std::vector<char> buf_;
};

class InFile {
 public:
  explicit InFile(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) throw std::runtime_error("cannot open " + path + ": " + errno_text());
  }
  ~InFile() { if (f_) std::fclose(f_); }
  void read_exact(void* out, size_t n, const char* what) {
    if (std::fread(out, 1, n, f_) != n)
      throw std::runtime_error(path_ + " is truncated (while reading " + what + ")");
  }
  size_t read_some(void* out, size_t n) { return std::fread(out, 1, n, f_); }
  void seek(int64_t offset) {
    if (fseeko(f_, offset, SEEK_SET) != 0) throw std::runtime_error("cannot seek in " + path_ + ": " + errno_text());
  }

 private:
  std::string path_;
  FILE* f_ = nullptr;
};

int64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("cannot stat " + path + ": " + errno_text());
  return st.st_size;
}

struct IdxHeader {
  int dtype_code;
  uint64_t sequence_count;
  uint64_t document_index_count;  // documents + 1
};

IdxHeader read_header(InFile& in, const std::string& path) {
  char magic[9];
  in.read_exact(magic, 9, "magic");
  if (std::memcmp(magic, kMagic, 9) != 0) throw std::runtime_error(path + " is not a Megatron .idx file (bad magic)");
  uint64_t version;
  in.read_exact(&version, 8, "version");
  if (version != 1) throw std::runtime_error(path + " has .idx version " + std::to_string(version) + ", expected 1");
  uint8_t code;
  in.read_exact(&code, 1, "dtype code");
  IdxHeader h;
  h.dtype_code = code;
  itemsize_of(code);
  in.read_exact(&h.sequence_count, 8, "sequence count");
  in.read_exact(&h.document_index_count, 8, "document count");
  return h;
}

// Range-checked conversion of one array of source type S into the builder's token type.
template <typename S, typename D>
void convert(const S* src, size_t n, D* dst, int64_t lo, int64_t hi) {
  for (size_t i = 0; i < n; ++i) {
    int64_t v = static_cast<int64_t>(src[i]);
    if (v < lo || v > hi || (std::is_unsigned<S>::value && static_cast<uint64_t>(src[i]) > static_cast<uint64_t>(hi)))
      throw std::overflow_error("token id " + std::to_string(v) + " at position " + std::to_string(i) +
                              " does not fit the dataset dtype (range " + std::to_string(lo) + ".." +
                              std::to_string(hi) + "); use int32 for vocabularies of 65,500 or more");
    dst[i] = static_cast<D>(v);
  }
}

template <typename D>
void convert_array(const py::array& arr, D* dst, int64_t lo, int64_t hi) {
  const size_t n = static_cast<size_t>(arr.size());
  const char kind = arr.dtype().kind();
  const auto size = arr.dtype().itemsize();
  const void* p = arr.data();
  if (kind == 'i') {
    if (size == 1) return convert(static_cast<const int8_t*>(p), n, dst, lo, hi);
    if (size == 2) return convert(static_cast<const int16_t*>(p), n, dst, lo, hi);
    if (size == 4) return convert(static_cast<const int32_t*>(p), n, dst, lo, hi);
    if (size == 8) return convert(static_cast<const int64_t*>(p), n, dst, lo, hi);
  } else if (kind == 'u') {
    if (size == 1) return convert(static_cast<const uint8_t*>(p), n, dst, lo, hi);
    if (size == 2) return convert(static_cast<const uint16_t*>(p), n, dst, lo, hi);
    if (size == 4) return convert(static_cast<const uint32_t*>(p), n, dst, lo, hi);
    if (size == 8) return convert(static_cast<const uint64_t*>(p), n, dst, lo, hi);
  }
  throw std::invalid_argument("token arrays must have an integer dtype, got " + std::string(py::str(arr.dtype())));
}

// Tokenizer output (a sequence of lists of Python ints) packed straight into the dataset's token
// type, `eod` appended to each document when >= 0; every id is range checked. Returns the token count.
template <typename D>
size_t collect_lists(const py::sequence& docs, int64_t eod, int64_t lo, int64_t hi, size_t first_doc,
                     std::vector<char>& out, std::vector<size_t>& lens) {
  if (eod >= 0 && (eod < lo || eod > hi))
    throw std::overflow_error("eod id " + std::to_string(eod) + " does not fit the dataset dtype");
  const size_t extra = eod >= 0 ? 1 : 0;
  size_t n = 0;
  lens.clear();
  for (auto doc : docs) {
    PyObject* fast = PySequence_Fast(doc.ptr(), "each document must be a list of token ids");
    if (!fast) throw py::error_already_set();
    const Py_ssize_t m = PySequence_Fast_GET_SIZE(fast);
    PyObject** items = PySequence_Fast_ITEMS(fast);
    if (out.size() < (n + m + extra) * sizeof(D)) out.resize(std::max(out.size() * 2, (n + m + extra) * sizeof(D)));
    D* dst = reinterpret_cast<D*>(out.data()) + n;
    for (Py_ssize_t i = 0; i < m; ++i) {
      const int64_t v = PyLong_AsLongLong(items[i]);
      if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(fast);
        throw py::error_already_set();
      }
      if (v < lo || v > hi) {
        Py_DECREF(fast);
        throw std::overflow_error("document " + std::to_string(first_doc + lens.size()) + ": token id " +
                                  std::to_string(v) + " does not fit the dataset dtype (range " + std::to_string(lo) +
                                  ".." + std::to_string(hi) + ")");
      }
      dst[i] = static_cast<D>(v);
    }
    if (extra) dst[m] = static_cast<D>(eod);
    Py_DECREF(fast);
    n += m + extra;
    lens.push_back(m + extra);
  }
  return n;
}

// Dispatches collect_lists on a dtype code.
size_t collect_by_code(int code, const py::sequence& docs, int64_t eod, int64_t lo, int64_t hi, size_t first_doc,
                       std::vector<char>& out, std::vector<size_t>& lens) {
  switch (code) {
    case 1: return collect_lists<uint8_t>(docs, eod, lo, hi, first_doc, out, lens);
    case 2: return collect_lists<int8_t>(docs, eod, lo, hi, first_doc, out, lens);
    case 3: return collect_lists<int16_t>(docs, eod, lo, hi, first_doc, out, lens);
    case 8: return collect_lists<uint16_t>(docs, eod, lo, hi, first_doc, out, lens);
    case 4: return collect_lists<int32_t>(docs, eod, lo, hi, first_doc, out, lens);
    default: return collect_lists<int64_t>(docs, eod, lo, hi, first_doc, out, lens);
  }
}

class Builder {
 public:
  Builder(const std::string& prefix, int dtype_code, bool sync) : prefix_(prefix), code_(dtype_code), sync_(sync) {
    itemsize_ = itemsize_of(dtype_code);
    range_of(dtype_code, &lo_, &hi_);
    bin_.open(prefix_ + ".bin.tmp");
    lengths_.open(prefix_ + ".idx.lengths.tmp");
    docs_.open(prefix_ + ".idx.docs.tmp");
  }
  ~Builder() {
    if (!finalized_) abort();
  }

  // One document made of one sequence (the usual pretraining case).
  void add_document(const py::array& tokens) {
    add_item(tokens);
    end_document();
  }

  void add_item(const py::array& tokens) {
    check_open();
    if (tokens.ndim() > 1) throw std::invalid_argument("add_item expects a 1-D token array");
    const size_t n = static_cast<size_t>(tokens.size());
    write_tokens(tokens, n);
    push_length(n);
  }

  void end_document() {
    check_open();
    const int64_t idx = static_cast<int64_t>(sequences_);
    docs_.write(&idx, 8);
    ++documents_;
  }

  // Many one-sequence documents at once: `tokens` concatenated, `lengths[i]` tokens each.
  void add_documents(const py::array& tokens, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& lengths) {
    check_open();
    auto len = lengths.unchecked<1>();
    int64_t total = 0;
    for (py::ssize_t i = 0; i < len.shape(0); ++i) {
      if (len(i) < 0) throw std::invalid_argument("negative document length");
      total += len(i);
    }
    if (total != tokens.size())
      throw std::invalid_argument("lengths sum to " + std::to_string(total) + " but " + std::to_string(tokens.size()) +
                                  " tokens were given");
    write_tokens(tokens, static_cast<size_t>(total));
    for (py::ssize_t i = 0; i < len.shape(0); ++i) {
      push_length(static_cast<size_t>(len(i)));
      const int64_t idx = static_cast<int64_t>(sequences_);
      docs_.write(&idx, 8);
      ++documents_;
    }
  }

  // Tokenizer output straight from Python (list of lists of ints), optionally with `eod` appended
  // to each document; avoids building a numpy array per document.
  void add_token_lists(const py::sequence& docs, int64_t eod) {
    check_open();
    // Everything is packed and validated before the first byte is written: a bad id leaves no partial batch.
    const size_t n = collect_by_code(code_, docs, eod, lo_, hi_, documents_, packed_, lens_);
    bin_.write(packed_.data(), n * itemsize_);
    tokens_ += n;
    for (size_t len : lens_) {
      push_length(len);
      const int64_t idx = static_cast<int64_t>(sequences_);
      docs_.write(&idx, 8);
      ++documents_;
    }
  }

  // Appends a whole existing dataset, streaming: memory is a fixed copy buffer.
  void add_index(const std::string& other_prefix) {
    check_open();
    const std::string idx_path = other_prefix + ".idx", bin_path = other_prefix + ".bin";
    InFile idx(idx_path);
    IdxHeader h = read_header(idx, idx_path);
    if (h.dtype_code != code_)
      throw std::runtime_error(idx_path + " has dtype code " + std::to_string(h.dtype_code) + " but this dataset uses " +
                               std::to_string(code_) + "; merge only datasets of the same tokenizer/dtype");
    if (h.document_index_count == 0) throw std::runtime_error(idx_path + " has no document indices (corrupt)");
    const int64_t expected_idx = kHeaderBytes + h.sequence_count * 12 + h.document_index_count * 8;
    if (file_size(idx_path) < expected_idx) throw std::runtime_error(idx_path + " is truncated");

    // Sizes first, so a mismatch is reported before anything is appended.
    std::vector<char> buf(kCopyBlock);
    uint64_t tokens = 0;
    {
      std::vector<int32_t> lens(kCopyBlock / 4);
      for (uint64_t done = 0; done < h.sequence_count;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(lens.size(), h.sequence_count - done));
        idx.read_exact(lens.data(), n * 4, "sequence lengths");
        for (size_t k = 0; k < n; ++k) tokens += static_cast<uint64_t>(lens[k]);
        done += n;
      }
    }
    const int64_t bin_bytes = file_size(bin_path);
    if (static_cast<uint64_t>(bin_bytes) != tokens * itemsize_)
      throw std::runtime_error(bin_path + " holds " + std::to_string(bin_bytes) + " bytes but " + idx_path + " describes " +
                               std::to_string(tokens * itemsize_) + "; the dataset is truncated or mismatched");

    InFile bin(bin_path);
    for (size_t got; (got = bin.read_some(buf.data(), buf.size())) > 0;) bin_.write(buf.data(), got);

    idx.seek(kHeaderBytes);
    std::vector<int32_t> lens(kCopyBlock / 4);
    for (uint64_t done = 0; done < h.sequence_count;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(lens.size(), h.sequence_count - done));
      idx.read_exact(lens.data(), n * 4, "sequence lengths");
      lengths_.write(lens.data(), n * 4);
      done += n;
    }
    idx.seek(kHeaderBytes + h.sequence_count * 12);
    std::vector<int64_t> doc(kCopyBlock / 8);
    const int64_t offset = static_cast<int64_t>(sequences_);
    bool first = true;
    for (uint64_t done = 0; done < h.document_index_count;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(doc.size(), h.document_index_count - done));
      idx.read_exact(doc.data(), n * 8, "document indices");
      size_t start = 0;
      if (first) {
        if (doc[0] != 0) throw std::runtime_error(idx_path + ": document indices do not start at 0 (corrupt)");
        start = 1;  // the leading 0 is already ours
        first = false;
      }
      for (size_t k = start; k < n; ++k) doc[k] += offset;
      docs_.write(doc.data() + start, (n - start) * 8);
      done += n;
    }
    sequences_ += h.sequence_count;
    documents_ += h.document_index_count - 1;
    tokens_ += tokens;
  }

  // Assembles the .idx from the spill files, then publishes .bin and .idx (in that order).
  void finalize() {
    check_open();
    bin_.close(sync_);
    lengths_.close(false);
    docs_.close(false);

    OutFile idx;
    idx.open(prefix_ + ".idx.tmp");
    idx.write(kMagic, 9);
    const uint64_t version = 1;
    idx.write(&version, 8);
    const uint8_t code = static_cast<uint8_t>(code_);
    idx.write(&code, 1);
    const uint64_t seq = sequences_, ndoc = documents_ + 1;
    idx.write(&seq, 8);
    idx.write(&ndoc, 8);

    std::vector<char> buf(kCopyBlock);
    {
      InFile in(lengths_.path());
      for (size_t got; (got = in.read_some(buf.data(), buf.size())) > 0;) idx.write(buf.data(), got);
    }
    {
      InFile in(lengths_.path());
      std::vector<int32_t> lens(kCopyBlock / 4);
      std::vector<int64_t> ptrs(kCopyBlock / 4);
      int64_t pointer = 0;
      for (uint64_t done = 0; done < sequences_;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(lens.size(), sequences_ - done));
        in.read_exact(lens.data(), n * 4, "spilled lengths");
        for (size_t k = 0; k < n; ++k) {
          ptrs[k] = pointer;
          pointer += static_cast<int64_t>(lens[k]) * itemsize_;
        }
        idx.write(ptrs.data(), n * 8);
        done += n;
      }
    }
    const int64_t zero = 0;
    idx.write(&zero, 8);
    {
      InFile in(docs_.path());
      for (size_t got; (got = in.read_some(buf.data(), buf.size())) > 0;) idx.write(buf.data(), got);
    }
    idx.close(sync_);

    const std::string bin_final = prefix_ + ".bin", idx_final = prefix_ + ".idx";
    // A stale .idx must never sit beside the new .bin, not even for a moment.
    if (std::remove(idx_final.c_str()) != 0 && errno != ENOENT)
      throw std::runtime_error("cannot remove old " + idx_final + ": " + errno_text());
    if (std::rename(bin_.path().c_str(), bin_final.c_str()) != 0)
      throw std::runtime_error("cannot rename " + bin_.path() + " to " + bin_final + ": " + errno_text());
    if (std::rename(idx.path().c_str(), idx_final.c_str()) != 0)
      throw std::runtime_error("cannot rename " + idx.path() + " to " + idx_final + ": " + errno_text());
    std::remove(lengths_.path().c_str());
    std::remove(docs_.path().c_str());
    finalized_ = true;
  }

  // Drops everything written so far; the previous dataset at the prefix (if any) is untouched.
  void abort() {
    if (finalized_) return;
    bin_.discard();
    lengths_.discard();
    docs_.discard();
    std::remove((prefix_ + ".idx.tmp").c_str());
    finalized_ = true;
  }

  uint64_t documents() const { return documents_; }
  uint64_t sequences() const { return sequences_; }
  uint64_t tokens() const { return tokens_; }
  int dtype_code() const { return code_; }
  const std::string& prefix() const { return prefix_; }

 private:
  void check_open() const {
    if (finalized_) throw std::runtime_error("the builder for " + prefix_ + " is already finalized or aborted");
  }

  void write_tokens(const py::array& tokens, size_t n) {
    py::array arr = py::array::ensure(tokens, py::array::c_style);
    if (!arr) throw std::invalid_argument("tokens must be convertible to a contiguous array");
    scratch_.resize(n * itemsize_);
    switch (code_) {
      case 1: convert_array(arr, reinterpret_cast<uint8_t*>(scratch_.data()), lo_, hi_); break;
      case 2: convert_array(arr, reinterpret_cast<int8_t*>(scratch_.data()), lo_, hi_); break;
      case 3: convert_array(arr, reinterpret_cast<int16_t*>(scratch_.data()), lo_, hi_); break;
      case 8: convert_array(arr, reinterpret_cast<uint16_t*>(scratch_.data()), lo_, hi_); break;
      case 4: convert_array(arr, reinterpret_cast<int32_t*>(scratch_.data()), lo_, hi_); break;
      default: convert_array(arr, reinterpret_cast<int64_t*>(scratch_.data()), lo_, hi_);
    }
    bin_.write(scratch_.data(), scratch_.size());
    tokens_ += n;
  }

  void push_length(size_t n) {
    if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
      throw std::length_error("a sequence of " + std::to_string(n) + " tokens exceeds the int32 length field");
    const int32_t len = static_cast<int32_t>(n);
    lengths_.write(&len, 4);
    ++sequences_;
  }

  std::string prefix_;
  int code_;
  bool sync_;  // fsync before publishing: the rename order then also holds across a power loss
  int itemsize_;
  int64_t lo_, hi_;
  OutFile bin_, lengths_, docs_;
  std::vector<char> scratch_;
  std::vector<char> packed_;
  std::vector<size_t> lens_;
  uint64_t documents_ = 0, sequences_ = 0, tokens_ = 0;
  bool finalized_ = false;
};

// Strict UTF-8 check with the rules of Python's decoder (no overlong forms, no surrogates, nothing
// above U+10FFFF); `first` gets the first code point. False for invalid bytes.
bool valid_utf8(const unsigned char* s, size_t n, uint32_t* first) {
  size_t i = 0;
  bool have_first = false;
  while (i < n) {
    const unsigned char c = s[i];
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return false;
      cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
      i += 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      if (i + 2 >= n) return false;
      const unsigned char c1 = s[i + 1], c2 = s[i + 2];
      const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
      if (c1 < lo || c1 > hi || (c2 & 0xC0) != 0x80) return false;
      cp = ((c & 0x0Fu) << 12) | ((c1 & 0x3Fu) << 6) | (c2 & 0x3Fu);
      i += 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      if (i + 3 >= n) return false;
      const unsigned char c1 = s[i + 1], c2 = s[i + 2], c3 = s[i + 3];
      const unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
      if (c1 < lo || c1 > hi || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80) return false;
      cp = ((c & 0x07u) << 18) | ((c1 & 0x3Fu) << 12) | ((c2 & 0x3Fu) << 6) | (c3 & 0x3Fu);
      i += 4;
    } else {
      return false;
    }
    if (!have_first) {
      *first = cp;
      have_first = true;
    }
  }
  return have_first;
}

// The jsonl lines whose text can be taken without a JSON parser: exactly `prefix` (`{"key": "` or
// `{"key":"`), a value with no '"', no '\\' and no control byte, then `"}`, optionally followed by
// one '\r'. Such a line is a valid JSON object with that one key whose string value is the raw
// bytes, so json.loads would give the same text; it is taken when the bytes are valid UTF-8 (the
// strict decoder, as bytes.decode) and the text does not start with whitespace (str.isspace
// cannot be true then). Scanning starts at `pos` and stops at the end of `data`, at the first
// line of any other shape (for the caller's full parser), or once `docs`/`text_bytes` reach the
// batch limits. Texts are appended to `texts`: str, or with `as_bytes` the checked UTF-8 bytes
// themselves (for a tokenizer that takes UTF-8, which saves decoding here and encoding there). Returns (pos, lines, consumed, text_bytes):
// consumed counts each line's bytes plus one for its newline, as the line reader does.
py::tuple scan_simple_jsonl(const py::bytes& data, size_t pos, const py::bytes& prefix1, const py::bytes& prefix2,
                            const py::list& texts, size_t docs, size_t max_docs, size_t text_bytes,
                            size_t max_text_bytes, bool as_bytes) {
  char* base;
  Py_ssize_t size;
  if (PyBytes_AsStringAndSize(data.ptr(), &base, &size) < 0) throw py::error_already_set();
  char *p1, *p2;
  Py_ssize_t n1, n2;
  if (PyBytes_AsStringAndSize(prefix1.ptr(), &p1, &n1) < 0) throw py::error_already_set();
  if (PyBytes_AsStringAndSize(prefix2.ptr(), &p2, &n2) < 0) throw py::error_already_set();
  const size_t end = static_cast<size_t>(size);
  size_t lines = 0, consumed = 0;
  while (pos < end && docs < max_docs && text_bytes < max_text_bytes) {
    const char* line = base + pos;
    const char* nl = static_cast<const char*>(std::memchr(line, '\n', end - pos));
    const size_t n = nl ? static_cast<size_t>(nl - line) : end - pos;
    size_t m = n;
    if (m && line[m - 1] == '\r') --m;
    size_t start;
    if (m >= static_cast<size_t>(n1) + 3 && std::memcmp(line, p1, n1) == 0) {
      start = n1;
    } else if (m >= static_cast<size_t>(n2) + 3 && std::memcmp(line, p2, n2) == 0) {
      start = n2;
    } else {
      break;
    }
    if (line[m - 2] != '"' || line[m - 1] != '}') break;
    const unsigned char* v = reinterpret_cast<const unsigned char*>(line) + start;
    const size_t vn = m - 2 - start;
    bool plain = true;
    for (size_t i = 0; i < vn; ++i) {
      const unsigned char c = v[i];
      if (c < 0x20 || c == '"' || c == '\\') {
        plain = false;
        break;
      }
    }
    if (!plain) break;
    PyObject* text;
    if (as_bytes) {
      uint32_t first = 0;
      if (!valid_utf8(v, vn, &first) || Py_UNICODE_ISSPACE(first)) break;
      text = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(v), static_cast<Py_ssize_t>(vn));
      if (!text) throw py::error_already_set();
    } else {
      text = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(v), static_cast<Py_ssize_t>(vn), "strict");
      if (!text) {
        PyErr_Clear();
        break;
      }
      if (Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(text, 0))) {
        Py_DECREF(text);
        break;
      }
    }
    const int failed = PyList_Append(texts.ptr(), text);
    Py_DECREF(text);
    if (failed) throw py::error_already_set();
    ++docs;
    ++lines;
    text_bytes += m;
    consumed += n + 1;
    pos += nl ? n + 1 : n;
  }
  return py::make_tuple(pos, lines, consumed, text_bytes);
}

}  // namespace

PYBIND11_MODULE(_indexed_builder, m) {
  m.doc() = "Streaming writer and merger for Megatron indexed datasets (.bin/.idx), byte-compatible with megatron-core";
  py::class_<Builder>(m, "Builder")
      .def(py::init<const std::string&, int, bool>(), py::arg("prefix"), py::arg("dtype_code"), py::arg("sync") = true)
      .def("add_document", &Builder::add_document, py::arg("tokens"))
      .def("add_item", &Builder::add_item, py::arg("tokens"))
      .def("end_document", &Builder::end_document)
      .def("add_documents", &Builder::add_documents, py::arg("tokens"), py::arg("lengths"))
      .def("add_token_lists", &Builder::add_token_lists, py::arg("docs"), py::arg("eod") = -1)
      .def("add_index", &Builder::add_index, py::arg("prefix"), py::call_guard<py::gil_scoped_release>())
      .def("finalize", &Builder::finalize, py::call_guard<py::gil_scoped_release>())
      .def("abort", &Builder::abort)
      .def_property_readonly("num_documents", &Builder::documents)
      .def_property_readonly("num_sequences", &Builder::sequences)
      .def_property_readonly("num_tokens", &Builder::tokens)
      .def_property_readonly("dtype_code", &Builder::dtype_code)
      .def_property_readonly("prefix", &Builder::prefix);
  m.def("scan_simple_jsonl", &scan_simple_jsonl, py::arg("data"), py::arg("pos"), py::arg("prefix1"),
        py::arg("prefix2"), py::arg("texts"), py::arg("docs"), py::arg("max_docs"), py::arg("text_bytes"),
        py::arg("max_text_bytes"), py::arg("as_bytes") = false);
}
