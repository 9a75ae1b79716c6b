// CharBPE tokenizer (see charbpe.h).
#include "text/charbpe.h"

#include <fstream>
#include <queue>
#include <sstream>

#include "core/error.h"
#include "text/normalizer.h"

namespace hwaga {

namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(what, " file ", path, ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(what, " file ", path, ": read error");
  return ss.str();
}

// One symbol of a word being merged: a token id, linked to its neighbours; len 0 = merged away.
struct Symbol {
  int32_t id;
  int prev, next;
  int len;
};

// A queued merge of the symbol at pos with its right neighbour. The queue pops the lowest
// rank first and, among equal ranks, the leftmost position.
struct QueuedMerge {
  uint32_t rank;
  int pos;
  int32_t new_id;
  bool operator>(const QueuedMerge& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

CharBpeTokenizer::CharBpeTokenizer(std::vector<std::string> vocab,
                                   std::vector<std::pair<std::string, std::string>> merges,
                                   const CharBpeOptions& opt, const CharBpeSource& src)
    : opt_(opt), vocab_(std::move(vocab)), merges_(std::move(merges)) {
  if (opt_.context_length < 1) fail("CharBPE: context_length must be >= 1, got ", opt_.context_length);
  if (vocab_.empty()) fail(src.vocab_what, ": the vocabulary is empty");
  if (vocab_.size() > size_t(INT32_MAX)) fail(src.vocab_what, ": too many tokens (", vocab_.size(), ")");
  token_to_id_.reserve(vocab_.size() * 2);
  for (size_t id = 0; id < vocab_.size(); ++id) {
    auto [it, fresh] = token_to_id_.emplace(vocab_[id], int32_t(id));
    if (!fresh)
      fail(src.vocab_what, ": token \"", vocab_[id], "\" appears twice, with ids ", it->second, " and ", id);
  }
  auto special = [&](const std::string& tok, const char* role) {
    auto it = token_to_id_.find(tok);
    if (it == token_to_id_.end())
      fail(src.vocab_what, ": the ", role, " token \"", tok, "\" is not in the vocabulary");
    specials_.push_back(text::utf8_decode(tok, std::string(role) + " token"));
    special_ids_.push_back(it->second);
    return it->second;
  };
  pad_id = special(opt_.pad_token, "pad");
  unk_id_ = special(opt_.unk_token, "unk");

  merge_map_.reserve(merges_.size() * 2);
  for (size_t rank = 0; rank < merges_.size(); ++rank) {
    const auto& [a, b] = merges_[rank];
    auto where = [&]() {
      return rank < src.merge_lines.size()
                 ? detail::concat(src.merges_what, ": line ", src.merge_lines[rank])
                 : detail::concat(src.merges_what, ": merge ", rank + 1);
    };
    auto ia = token_to_id_.find(a), ib = token_to_id_.find(b);
    if (ia == token_to_id_.end()) fail(where(), ": \"", a, "\" is not in the vocabulary");
    if (ib == token_to_id_.end()) fail(where(), ": \"", b, "\" is not in the vocabulary");
    auto in = token_to_id_.find(a + b);
    if (in == token_to_id_.end())
      fail(where(), ": the merge result \"", a + b, "\" of \"", a, " ", b, "\" is not in the vocabulary");
    // A repeated pair keeps its last rank, as the library's merge map does.
    merge_map_[pair_key(ia->second, ib->second)] = {uint32_t(rank), in->second};
  }
  context_length = opt_.context_length;
  vocab_size = int(vocab_.size());
}

std::vector<int32_t> CharBpeTokenizer::bpe_word(std::u32string_view word) const {
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  std::string piece;
  for (size_t i = 0; i < word.size(); ++i) {
    piece.clear();
    text::utf8_append(piece, word[i]);
    if (i + 1 == word.size()) piece += opt_.end_of_word_suffix;
    auto it = token_to_id_.find(piece);
    int n = int(sym.size());
    sym.push_back({it == token_to_id_.end() ? unk_id_ : it->second, n - 1, -1, 1});
    if (n > 0) sym[n - 1].next = n;
  }

  std::priority_queue<QueuedMerge, std::vector<QueuedMerge>, std::greater<QueuedMerge>> queue;
  auto lookup = [&](int32_t a, int32_t b) -> const MergeTarget* {
    auto it = merge_map_.find(pair_key(a, b));
    return it == merge_map_.end() ? nullptr : &it->second;
  };
  for (int i = 0; i + 1 < int(sym.size()); ++i)
    if (auto* m = lookup(sym[i].id, sym[i + 1].id)) queue.push({m->rank, i, m->new_id});

  while (!queue.empty()) {
    QueuedMerge top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    Symbol right = sym[cur.next];
    // Skip stale entries: the pair at pos must still merge into the queued id.
    const MergeTarget* now = lookup(cur.id, right.id);
    if (!now || now->new_id != top.new_id) continue;
    sym[cur.next].len = 0;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (cur.prev >= 0)
      if (auto* m = lookup(sym[cur.prev].id, cur.id)) queue.push({m->rank, cur.prev, m->new_id});
    if (cur.next >= 0)
      if (auto* m = lookup(cur.id, sym[cur.next].id)) queue.push({m->rank, top.pos, m->new_id});
  }

  std::vector<int32_t> ids;
  for (const Symbol& s : sym)
    if (s.len != 0) ids.push_back(s.id);
  return ids;
}

std::vector<int32_t> CharBpeTokenizer::encode_unpadded(std::string_view prompt) const {
  std::u32string text = text::utf8_decode(prompt, "prompt");
  std::vector<int32_t> ids;
  for (const text::TextPiece& piece : text::split_special_tokens(text, specials_)) {
    if (piece.special >= 0) {
      ids.push_back(special_ids_[piece.special]);
      continue;
    }
    std::u32string norm = text::bert_normalize(piece.text, opt_.lowercase);
    for (const std::u32string& word : text::bert_pre_tokenize(norm)) {
      std::vector<int32_t> w = bpe_word(word);
      ids.insert(ids.end(), w.begin(), w.end());
    }
  }
  return ids;
}

std::string CharBpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= vocab_.size())
    fail("CharBPE: id ", id, " is outside the vocabulary (0..", vocab_.size() - 1, ")");
  return vocab_[id];
}

std::string CharBpeTokenizer::decode(std::span<const int32_t> ids, bool skip_pad) const {
  std::vector<std::string> toks;
  for (int32_t id : ids) {
    if (skip_pad && id == pad_id) continue;
    toks.push_back(id_to_token(id));
  }
  const std::string& suffix = opt_.end_of_word_suffix;
  std::string out;
  for (size_t i = 0; i < toks.size(); ++i) {
    const std::string repl = i + 1 == toks.size() ? "" : " ";
    const std::string& t = toks[i];
    size_t pos = 0;
    while (!suffix.empty()) {
      size_t hit = t.find(suffix, pos);
      if (hit == std::string::npos) break;
      out.append(t, pos, hit - pos);
      out += repl;
      pos = hit + suffix.size();
    }
    out.append(t, pos);
  }
  return out;
}

nlohmann::json CharBpeTokenizer::to_json_value() const {
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& [a, b] : merges_) merges.push_back(a + " " + b);
  return {{"type", "charbpe"},
          {"context_length", opt_.context_length},
          {"lowercase", opt_.lowercase},
          {"unk_token", opt_.unk_token},
          {"pad_token", opt_.pad_token},
          {"end_of_word_suffix", opt_.end_of_word_suffix},
          {"vocab", vocab_},
          {"merges", std::move(merges)}};
}

std::string CharBpeTokenizer::to_json() const { return to_json_value().dump(); }

std::unique_ptr<CharBpeTokenizer> CharBpeTokenizer::from_json(const nlohmann::json& j,
                                                              const std::string& what) {
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key)) fail(what, ": charbpe tokenizer has no \"", key, "\" field");
    return j.at(key);
  };
  auto text = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_string()) fail(what, ": \"", key, "\" must be a string, found ", v.type_name());
    return v.get<std::string>();
  };
  CharBpeOptions opt;
  const auto& ctx = field("context_length");
  if (!ctx.is_number_integer() || ctx.get<int64_t>() < 1 || ctx.get<int64_t>() > (1 << 20))
    fail(what, ": \"context_length\" must be an integer in 1..1048576, found ", ctx.dump());
  opt.context_length = ctx.get<int>();
  const auto& lc = field("lowercase");
  if (!lc.is_boolean()) fail(what, ": \"lowercase\" must be true or false, found ", lc.dump());
  opt.lowercase = lc.get<bool>();
  opt.unk_token = text("unk_token");
  opt.pad_token = text("pad_token");
  opt.end_of_word_suffix = text("end_of_word_suffix");

  const auto& jv = field("vocab");
  if (!jv.is_array()) fail(what, ": \"vocab\" must be an array of token strings, found ", jv.type_name());
  std::vector<std::string> vocab;
  vocab.reserve(jv.size());
  for (size_t i = 0; i < jv.size(); ++i) {
    if (!jv[i].is_string()) fail(what, ": \"vocab\"[", i, "] must be a string, found ", jv[i].type_name());
    vocab.push_back(jv[i].get<std::string>());
  }
  const auto& jm = field("merges");
  if (!jm.is_array()) fail(what, ": \"merges\" must be an array of \"A B\" strings, found ", jm.type_name());
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(jm.size());
  for (size_t i = 0; i < jm.size(); ++i) {
    if (!jm[i].is_string()) fail(what, ": \"merges\"[", i, "] must be a string, found ", jm[i].type_name());
    const std::string& s = jm[i].get_ref<const std::string&>();
    size_t sp = s.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
      fail(what, ": \"merges\"[", i, "] must be two tokens separated by one space, found \"", s, "\"");
    merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
  }
  CharBpeSource src{what + " \"vocab\"", what + " \"merges\"", {}};
  return std::make_unique<CharBpeTokenizer>(std::move(vocab), std::move(merges), opt, src);
}

std::unique_ptr<CharBpeTokenizer> charbpe_from_files(const std::string& vocab_path,
                                                     const std::string& merges_path,
                                                     int context_length) {
  // ---- vocabulary: {"token": id, ...} with ids 0..N-1 ----
  std::string vtext = read_text_file(vocab_path, "vocabulary");
  nlohmann::json vj;
  try {
    vj = nlohmann::json::parse(vtext);
  } catch (const nlohmann::json::exception& e) {
    fail("vocabulary file ", vocab_path, ": not valid JSON (", e.what(), ")");
  }
  if (!vj.is_object())
    fail("vocabulary file ", vocab_path, ": expected a JSON object {\"token\": id, ...}, found ", vj.type_name());
  std::vector<std::string> vocab(vj.size());
  std::vector<bool> seen(vj.size(), false);
  for (const auto& [tok, idj] : vj.items()) {
    if (!idj.is_number_integer() || idj.get<int64_t>() < 0)
      fail("vocabulary file ", vocab_path, ": token \"", tok, "\" has id ", idj.dump(),
           ", expected a non-negative integer");
    int64_t id = idj.get<int64_t>();
    if (id >= int64_t(vocab.size()))
      fail("vocabulary file ", vocab_path, ": token \"", tok, "\" has id ", id, " but the ", vocab.size(),
           " tokens must use ids 0..", vocab.size() - 1, " (an id is skipped or repeated)");
    if (seen[id])
      fail("vocabulary file ", vocab_path, ": id ", id, " is given to both \"", vocab[id], "\" and \"", tok, "\"");
    seen[id] = true;
    vocab[id] = tok;
  }

  // ---- merges: "#version..." header lines, then one "A B" per line ----
  std::string mtext = read_text_file(merges_path, "merges");
  std::vector<std::pair<std::string, std::string>> merges;
  CharBpeSource src{"vocabulary file " + vocab_path, "merges file " + merges_path, {}};
  size_t pos = 0;
  int line_no = 0;
  while (pos < mtext.size()) {
    size_t eol = mtext.find('\n', pos);
    std::string line = mtext.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    pos = eol == std::string::npos ? mtext.size() : eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0) continue;
    if (line_no == 1 && !line.empty() && line[0] == '#')
      fail("merges file ", merges_path, ": line 1: bad header \"", line.substr(0, 60),
           "\", expected \"#version: ...\" or a first merge \"A B\"");
    size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos)
      fail("merges file ", merges_path, ": line ", line_no, ": expected two tokens separated by one space, found \"",
           line.substr(0, 60), "\"");
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    src.merge_lines.push_back(line_no);
  }
  CharBpeOptions opt;
  opt.context_length = context_length;
  return std::make_unique<CharBpeTokenizer>(std::move(vocab), std::move(merges), opt, src);
}

}  // namespace hwaga
