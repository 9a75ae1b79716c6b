#include "io/pickle.h"

#include <charconv>
#include <cstring>
#include <sstream>
#include <unordered_map>

#include "core/error.h"

namespace hwaga::pickle {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "big int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Set: return "set";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

namespace {

// Opcode bytes, named as in CPython's pickle.py.
enum : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I',
  BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P',
  BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U',
  UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd',
  EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
  LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85,
  TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  BINBYTES = 'B', SHORT_BINBYTES = 'C', SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d,
  BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92,
  STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95, BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97,
  READONLY_BUFFER = 0x98,
};

bool is_tensor_rebuilder(const std::string& g) {
  return g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor" ||
         g == "torch._utils._rebuild_tensor_v3";
}
bool is_parameter_rebuilder(const std::string& g) {
  return g == "torch._utils._rebuild_parameter" || g == "torch._utils._rebuild_parameter_with_state";
}

// torch.float32 -> "Float" (the storage-class spelling), for _rebuild_tensor_v3's dtype argument.
std::string scalar_type_of_dtype(const std::string& global) {
  static const std::pair<const char*, const char*> names[] = {
      {"torch.float32", "Float"}, {"torch.float", "Float"},     {"torch.float16", "Half"},
      {"torch.half", "Half"},     {"torch.bfloat16", "BFloat16"}, {"torch.int64", "Long"},
      {"torch.long", "Long"},     {"torch.int32", "Int"},       {"torch.int", "Int"},
      {"torch.uint8", "Byte"},    {"torch.bool", "Bool"},       {"torch.float64", "Double"},
      {"torch.double", "Double"}, {"torch.int16", "Short"},     {"torch.int8", "Char"},
  };
  for (auto& [g, s] : names)
    if (global == g) return s;
  return global;
}

class Unpickler {
 public:
  Unpickler(const uint8_t* d, size_t n, const std::string& what, const Limits& lim, std::deque<Value>& arena)
      : d_(d), n_(n), what_(what), lim_(lim), arena_(arena) {}

  const Value* run() {
    while (pos_ < n_) {
      op_pos_ = pos_;
      op_ = d_[pos_++];
      if (op_ == STOP) return pop();
      step();
    }
    op_pos_ = pos_;
    bad("data ended without a STOP opcode (truncated?)");
  }

 private:
  template <typename... Args>
  [[noreturn]] void bad(Args&&... args) {
    std::ostringstream op;
    op << "0x" << std::hex << int(op_);
    if (op_ >= 0x20 && op_ < 0x7f) op << " '" << char(op_) << "'";
    fail(what_, ": ", std::forward<Args>(args)..., " (opcode ", op.str(), " at offset ", op_pos_, ")");
  }

  const uint8_t* take(uint64_t k) {
    if (k > n_ - pos_) bad("truncated: an argument needs ", k, " bytes, ", n_ - pos_, " are left");
    const uint8_t* p = d_ + pos_;
    pos_ += size_t(k);
    return p;
  }
  uint64_t le(int bytes) {
    const uint8_t* p = take(uint64_t(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }
  std::string_view line() {
    size_t avail = std::min(n_ - pos_, lim_.max_line + 1);
    const void* nl = std::memchr(d_ + pos_, '\n', avail);
    if (!nl) bad("text argument without a newline within ", lim_.max_line, " bytes");
    size_t len = size_t(static_cast<const uint8_t*>(nl) - (d_ + pos_));
    std::string_view s(reinterpret_cast<const char*>(d_ + pos_), len);
    pos_ += len + 1;
    if (!s.empty() && s.back() == '\r') s.remove_suffix(1);
    return s;
  }
  int64_t line_index() {
    std::string_view s = line();
    uint64_t v = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) bad("bad memo index '", s, "'");
    return int64_t(v & 0x7fffffffffffffffull);
  }

  Value* make(Kind k) {
    if (arena_.size() >= lim_.max_values) bad("more than ", lim_.max_values, " objects");
    Value& v = arena_.emplace_back();
    v.kind = k;
    return &v;
  }
  Value* make_int(int64_t i) {
    Value* v = make(Kind::Int);
    v->integer = i;
    return v;
  }
  Value* make_str(Kind k, const uint8_t* p, size_t len) {
    Value* v = make(k);
    v->text.assign(reinterpret_cast<const char*>(p), len);
    return v;
  }
  Value* placeholder(std::string origin) {
    Value* v = make(Kind::Object);
    v->text = std::move(origin);
    return v;
  }

  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(const Value* v) {
    if (stack_.size() + marks_.size() >= lim_.max_stack) bad("stack deeper than ", lim_.max_stack);
    stack_.push_back(v);
  }
  const Value* pop() {
    if (stack_.size() <= floor()) bad("stack underflow");
    const Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  // The top item, which the opcode modifies in place (list, dict, set).
  Value* top_mut() {
    if (stack_.size() <= floor()) bad("stack underflow");
    return const_cast<Value*>(stack_.back());
  }
  std::vector<const Value*> pop_mark() {
    if (marks_.empty()) bad("no MARK to pop to");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<const Value*> items(stack_.begin() + std::ptrdiff_t(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void memo_put(uint64_t i) {
    if (stack_.size() <= floor()) bad("memo store with an empty stack");
    if (memo_.size() >= lim_.max_memo && !memo_.count(i)) bad("more than ", lim_.max_memo, " memo entries");
    memo_[i] = stack_.back();
  }
  void memo_get(uint64_t i) {
    auto it = memo_.find(i);
    if (it == memo_.end()) bad("memo entry ", i, " was never stored");
    push(it->second);
  }

  Value* tuple(std::vector<const Value*> items) {
    Value* v = make(Kind::Tuple);
    v->items = std::move(items);
    return v;
  }
  Value* parse_int_text(std::string_view s, bool is_long) {
    if (is_long && !s.empty() && s.back() == 'L') s.remove_suffix(1);
    if (!is_long && (s == "00" || s == "01")) {  // protocol 0 booleans
      Value* v = make(Kind::Bool);
      v->boolean = s == "01";
      return v;
    }
    std::string_view digits = s;
    if (!digits.empty() && digits[0] == '+') digits.remove_prefix(1);
    int64_t i = 0;
    auto r = std::from_chars(digits.data(), digits.data() + digits.size(), i);
    if (r.ptr != digits.data() + digits.size() || digits.empty() ||
        (r.ec != std::errc() && r.ec != std::errc::result_out_of_range))
      bad("bad integer text '", s.substr(0, 40), "'");
    if (r.ec == std::errc::result_out_of_range) return make(Kind::BigInt);
    return make_int(i);
  }
  Value* parse_long_bytes(uint64_t len) {
    const uint8_t* p = take(len);
    if (len > 8) return make(Kind::BigInt);
    uint64_t u = 0;
    for (uint64_t i = len; i-- > 0;) u = (u << 8) | p[i];
    if (len > 0 && len < 8 && (p[len - 1] & 0x80)) u |= ~uint64_t(0) << (8 * len);  // sign-extend
    return make_int(int64_t(u));
  }

  // A call the data asks for: f(*args). Only the allowed callables do anything.
  const Value* call(const Value* f, const Value* args, int depth = 0) {
    if (f->kind == Kind::Object) return placeholder(f->text);
    if (f->kind != Kind::Global) return placeholder(std::string("a call of a ") + kind_name(f->kind));
    if (args->kind != Kind::Tuple)
      bad("arguments of '", f->text, "' are a ", kind_name(args->kind), ", not a tuple");
    const std::string& g = f->text;
    const auto& a = args->items;
    if (g == "collections.OrderedDict") {
      if (!a.empty()) return placeholder(g + " with arguments");
      return make(Kind::Dict);
    }
    if (is_tensor_rebuilder(g)) return rebuild_tensor(g, a);
    if (is_parameter_rebuilder(g)) {
      if (a.empty() || a[0]->kind != Kind::Tensor) bad("'", g, "' of something that is not a tensor");
      return a[0];
    }
    if (g == "torch._tensor._rebuild_from_type_v2" && depth == 0) {
      // (func, type, args, state): a Tensor/Parameter rebuilt by func(*args), state ignored.
      if (a.size() == 4 && a[0]->kind == Kind::Global && a[1]->kind == Kind::Global &&
          (a[1]->text == "torch.Tensor" || a[1]->text == "torch.nn.parameter.Parameter") &&
          (is_tensor_rebuilder(a[0]->text) || is_parameter_rebuilder(a[0]->text)))
        return call(a[0], a[2], depth + 1);
      return placeholder(a.size() >= 2 && a[1]->kind == Kind::Global ? a[1]->text : g);
    }
    // Objects pickled with protocol < 2 name their class as the first argument.
    if (g == "copyreg._reconstructor" && !a.empty() && a[0]->kind == Kind::Global)
      return placeholder(a[0]->text);
    return placeholder(g);
  }

  const Value* rebuild_tensor(const std::string& g, const std::vector<const Value*>& a) {
    const bool v1 = g == "torch._utils._rebuild_tensor", v3 = g == "torch._utils._rebuild_tensor_v3";
    const size_t need = v1 ? 4 : v3 ? 7 : 6;
    if (a.size() < need || a.size() > need + 1)
      bad("'", g, "' with ", a.size(), " arguments, expected ", need);
    if (a[0]->kind != Kind::Storage)
      bad("'", g, "' over a ", kind_name(a[0]->kind), ", not a torch storage persistent id");
    auto ints = [&](const Value* t, const char* what, std::vector<int64_t>& out) {
      if (t->kind != Kind::Tuple && t->kind != Kind::List)
        bad("'", g, "' ", what, " is a ", kind_name(t->kind), ", not a tuple");
      if (t->items.size() > lim_.max_dims) bad("'", g, "' ", what, " has ", t->items.size(), " dimensions");
      for (const Value* x : t->items) {
        if (x->kind != Kind::Int) bad("'", g, "' ", what, " holds a ", kind_name(x->kind), ", not an int");
        out.push_back(x->integer);
      }
    };
    Value* v = make(Kind::Tensor);
    v->tensor = std::make_unique<TensorRef>();
    TensorRef& t = *v->tensor;
    t.storage = a[0];
    if (v3) {
      if (a[6]->kind != Kind::Global) bad("'", g, "' dtype is a ", kind_name(a[6]->kind), ", not a torch dtype");
      t.scalar_type = scalar_type_of_dtype(a[6]->text);
    } else {
      const std::string& st = a[0]->storage->type;
      t.scalar_type = st.size() > 7 && st.ends_with("Storage") ? st.substr(0, st.size() - 7) : st;
    }
    if (a[1]->kind != Kind::Int) bad("'", g, "' storage offset is a ", kind_name(a[1]->kind), ", not an int");
    t.offset = a[1]->integer;
    ints(a[2], "size", t.size);
    ints(a[3], "stride", t.stride);
    if (!v1) t.requires_grad = (a[4]->kind == Kind::Bool && a[4]->boolean) || (a[4]->kind == Kind::Int && a[4]->integer);
    return v;
  }

  // torch's persistent ids: ('storage', torch.<T>Storage, key, location, numel).
  const Value* persistent_load(const Value* pid) {
    const auto& a = pid->items;
    if (pid->kind != Kind::Tuple || a.size() < 5 || a[0]->kind != Kind::Str || a[0]->text != "storage" ||
        a[1]->kind != Kind::Global || (a[2]->kind != Kind::Str && a[2]->kind != Kind::Int) ||
        a[4]->kind != Kind::Int)
      return placeholder("a persistent id that is not a torch storage");
    Value* v = make(Kind::Storage);
    v->storage = std::make_unique<StorageRef>();
    StorageRef& s = *v->storage;
    const std::string& type = a[1]->text;
    size_t dot = type.rfind('.');
    s.type = dot == std::string::npos ? type : type.substr(dot + 1);
    s.key = a[2]->kind == Kind::Str ? a[2]->text : std::to_string(a[2]->integer);
    s.location = a[3]->kind == Kind::Str ? a[3]->text : "";
    s.numel = a[4]->integer;
    return v;
  }

  void step();

  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0, op_pos_ = 0;
  uint8_t op_ = 0;
  const std::string& what_;
  const Limits& lim_;
  std::deque<Value>& arena_;
  std::vector<const Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, const Value*> memo_;
};

void Unpickler::step() {
  switch (op_) {
    // ---- framing and stack manipulation ----
    case PROTO: {
      int v = *take(1);
      if (v > 5) bad("unsupported pickle protocol ", v);
      break;
    }
    case FRAME: take(8); break;  // frames only group opcodes; the bytes follow inline
    case MARK:
      if (stack_.size() + marks_.size() >= lim_.max_stack) bad("stack deeper than ", lim_.max_stack);
      marks_.push_back(stack_.size());
      break;
    case POP:
      if (stack_.size() > floor()) stack_.pop_back();
      else pop_mark();
      break;
    case POP_MARK: pop_mark(); break;
    case DUP: {
      const Value* v = pop();
      push(v);
      push(v);
      break;
    }
    // ---- memo ----
    case PUT: memo_put(uint64_t(line_index())); break;
    case BINPUT: memo_put(le(1)); break;
    case LONG_BINPUT: memo_put(le(4)); break;
    case MEMOIZE: memo_put(memo_.size()); break;
    case GET: memo_get(uint64_t(line_index())); break;
    case BINGET: memo_get(le(1)); break;
    case LONG_BINGET: memo_get(le(4)); break;
    // ---- scalars ----
    case NONE: push(make(Kind::None)); break;
    case NEWTRUE:
    case NEWFALSE: {
      Value* v = make(Kind::Bool);
      v->boolean = op_ == NEWTRUE;
      push(v);
      break;
    }
    case BININT: push(make_int(int32_t(uint32_t(le(4))))); break;
    case BININT1: push(make_int(int64_t(le(1)))); break;
    case BININT2: push(make_int(int64_t(le(2)))); break;
    case INT: push(parse_int_text(line(), false)); break;
    case LONG: push(parse_int_text(line(), true)); break;
    case LONG1: push(parse_long_bytes(le(1))); break;
    case LONG4: {
      int32_t len = int32_t(uint32_t(le(4)));
      if (len < 0) bad("negative LONG4 length ", len);
      push(parse_long_bytes(uint64_t(len)));
      break;
    }
    case FLOAT: {
      std::string_view s = line();
      double x = 0;
      auto r = std::from_chars(s.data(), s.data() + s.size(), x);
      if (r.ec != std::errc() || r.ptr != s.data() + s.size()) bad("bad float text '", s.substr(0, 40), "'");
      Value* v = make(Kind::Float);
      v->real = x;
      push(v);
      break;
    }
    case BINFLOAT: {
      const uint8_t* p = take(8);
      uint64_t u = 0;
      for (int i = 0; i < 8; ++i) u = (u << 8) | p[i];  // big-endian
      Value* v = make(Kind::Float);
      std::memcpy(&v->real, &u, 8);
      push(v);
      break;
    }
    // ---- strings and bytes (lengths checked against the remaining data by take) ----
    case STRING:
    case UNICODE: {
      // Protocol 0 text forms; kept as written (quotes stripped, escapes not decoded).
      std::string_view s = line();
      if (op_ == STRING) {
        if (s.size() < 2 || (s[0] != '\'' && s[0] != '"') || s.back() != s[0]) bad("bad STRING quoting");
        s = s.substr(1, s.size() - 2);
      }
      push(make_str(Kind::Str, reinterpret_cast<const uint8_t*>(s.data()), s.size()));
      break;
    }
    case BINSTRING: {
      int32_t len = int32_t(uint32_t(le(4)));
      if (len < 0) bad("negative BINSTRING length ", len);
      push(make_str(Kind::Str, take(uint64_t(len)), size_t(len)));
      break;
    }
    case SHORT_BINSTRING:
    case SHORT_BINUNICODE: {
      uint64_t len = le(1);
      push(make_str(Kind::Str, take(len), size_t(len)));
      break;
    }
    case BINUNICODE: {
      uint64_t len = le(4);
      push(make_str(Kind::Str, take(len), size_t(len)));
      break;
    }
    case BINUNICODE8: {
      uint64_t len = le(8);
      push(make_str(Kind::Str, take(len), size_t(len)));
      break;
    }
    case SHORT_BINBYTES: {
      uint64_t len = le(1);
      push(make_str(Kind::Bytes, take(len), size_t(len)));
      break;
    }
    case BINBYTES: {
      uint64_t len = le(4);
      push(make_str(Kind::Bytes, take(len), size_t(len)));
      break;
    }
    case BINBYTES8:
    case BYTEARRAY8: {
      uint64_t len = le(8);
      push(make_str(Kind::Bytes, take(len), size_t(len)));
      break;
    }
    case NEXT_BUFFER: bad("out-of-band buffers are not supported");
    case READONLY_BUFFER: top_mut(); break;
    // ---- containers ----
    case EMPTY_DICT: push(make(Kind::Dict)); break;
    case EMPTY_LIST: push(make(Kind::List)); break;
    case EMPTY_TUPLE: push(make(Kind::Tuple)); break;
    case EMPTY_SET: push(make(Kind::Set)); break;
    case TUPLE: push(tuple(pop_mark())); break;
    case TUPLE1: {
      const Value* a = pop();
      push(tuple({a}));
      break;
    }
    case TUPLE2: {
      const Value* b = pop();
      const Value* a = pop();
      push(tuple({a, b}));
      break;
    }
    case TUPLE3: {
      const Value* c = pop();
      const Value* b = pop();
      const Value* a = pop();
      push(tuple({a, b, c}));
      break;
    }
    case LIST:
    case FROZENSET: {
      Value* v = make(op_ == LIST ? Kind::List : Kind::Set);
      v->items = pop_mark();
      push(v);
      break;
    }
    case DICT: {
      std::vector<const Value*> items = pop_mark();
      if (items.size() % 2) bad("DICT with an odd number of items");
      Value* v = make(Kind::Dict);
      v->items = std::move(items);
      push(v);
      break;
    }
    case APPEND:
    case APPENDS:
    case ADDITEMS: {
      std::vector<const Value*> items;
      if (op_ == APPEND) items.push_back(pop());
      else items = pop_mark();
      Value* target = top_mut();
      Kind want = op_ == ADDITEMS ? Kind::Set : Kind::List;
      if (target->kind == Kind::Object) break;  // a placeholder's own append: not executed
      if (target->kind != want) bad("adding items to a ", kind_name(target->kind));
      if (target->items.size() + items.size() > lim_.max_values) bad("container too large");
      target->items.insert(target->items.end(), items.begin(), items.end());
      break;
    }
    case SETITEM:
    case SETITEMS: {
      std::vector<const Value*> items;
      if (op_ == SETITEM) {
        const Value* value = pop();
        const Value* key = pop();
        items = {key, value};
      } else {
        items = pop_mark();
        if (items.size() % 2) bad("SETITEMS with an odd number of items");
      }
      Value* target = top_mut();
      if (target->kind == Kind::Object) break;  // a placeholder's __setitem__: not executed
      if (target->kind != Kind::Dict) bad("setting items of a ", kind_name(target->kind));
      if (target->items.size() + items.size() > lim_.max_values) bad("container too large");
      target->items.insert(target->items.end(), items.begin(), items.end());
      break;
    }
    // ---- globals and calls: nothing is ever executed ----
    case GLOBAL: {
      std::string module(line());
      std::string name(line());
      Value* v = make(Kind::Global);
      v->text = module + "." + name;
      push(v);
      break;
    }
    case STACK_GLOBAL: {
      const Value* name = pop();
      const Value* module = pop();
      if (name->kind != Kind::Str || module->kind != Kind::Str) bad("STACK_GLOBAL of non-strings");
      Value* v = make(Kind::Global);
      v->text = module->text + "." + name->text;
      push(v);
      break;
    }
    case REDUCE: {
      const Value* args = pop();
      const Value* f = pop();
      push(call(f, args));
      break;
    }
    case NEWOBJ:
    case NEWOBJ_EX: {
      if (op_ == NEWOBJ_EX) pop();  // kwargs
      const Value* args = pop();
      const Value* cls = pop();
      if (args->kind != Kind::Tuple) bad("NEWOBJ arguments are a ", kind_name(args->kind), ", not a tuple");
      // cls.__new__(cls, *args): only OrderedDict is known; anything else is a placeholder.
      if (cls->kind == Kind::Global && cls->text == "collections.OrderedDict") push(make(Kind::Dict));
      else if (cls->kind == Kind::Global || cls->kind == Kind::Object) push(placeholder(cls->text));
      else bad("NEWOBJ of a ", kind_name(cls->kind));
      break;
    }
    case INST: {
      std::string module(line());
      std::string name(line());
      Value* f = make(Kind::Global);
      f->text = module + "." + name;
      push(call(f, tuple(pop_mark())));
      break;
    }
    case OBJ: {
      std::vector<const Value*> items = pop_mark();
      if (items.empty()) bad("OBJ without a class");
      const Value* f = items[0];
      push(call(f, tuple(std::vector<const Value*>(items.begin() + 1, items.end()))));
      break;
    }
    case BUILD:
      // obj.__setstate__(state) or obj.__dict__.update(state): the state is dropped. This covers
      // OrderedDict's _metadata attribute, tensor/parameter state and every placeholder.
      pop();
      top_mut();
      break;
    case PERSID:
      line();
      push(placeholder("a text persistent id"));
      break;
    case BINPERSID: push(persistent_load(pop())); break;
    case EXT1:
    case EXT2:
    case EXT4: {
      uint64_t code = le(op_ == EXT1 ? 1 : op_ == EXT2 ? 2 : 4);
      push(placeholder("extension code " + std::to_string(code)));
      break;
    }
    default: bad("unknown opcode");
  }
}

}  // namespace

Pickle parse(const uint8_t* data, size_t size, const std::string& what, const Limits& limits) {
  Pickle p;
  p.arena_ = std::make_unique<std::deque<Value>>();
  Unpickler u(data, size, what, limits, *p.arena_);
  p.root_ = u.run();
  return p;
}

const Value* dict_get(const Value* dict, std::string_view key) {
  if (!dict || dict->kind != Kind::Dict) return nullptr;
  for (size_t i = dict->items.size(); i >= 2; i -= 2) {
    const Value* k = dict->items[i - 2];
    if (k->kind == Kind::Str && k->text == key) return dict->items[i - 1];
  }
  return nullptr;
}

std::string describe(const Value* v) {
  std::ostringstream os;
  auto quoted = [&](const std::string& s) {
    os << '\'' << (s.size() > 60 ? s.substr(0, 57) + "..." : s) << '\'';
  };
  switch (v->kind) {
    case Kind::None: os << "None"; break;
    case Kind::Bool: os << "bool " << (v->boolean ? "True" : "False"); break;
    case Kind::Int: os << "int " << v->integer; break;
    case Kind::BigInt: os << "int (more than 64 bits)"; break;
    case Kind::Float: os << "float " << v->real; break;
    case Kind::Str: os << "str "; quoted(v->text); break;
    case Kind::Bytes: os << "bytes (" << v->text.size() << ")"; break;
    case Kind::List:
    case Kind::Tuple:
    case Kind::Set: os << kind_name(v->kind) << " of " << v->items.size() << " items"; break;
    case Kind::Dict: {
      size_t tensors = 0;
      for (size_t i = 1; i < v->items.size(); i += 2) tensors += v->items[i]->kind == Kind::Tensor;
      os << "dict of " << v->items.size() / 2 << " entries";
      if (tensors) os << " (" << tensors << " tensors)";
      break;
    }
    case Kind::Global: os << "global "; quoted(v->text); break;
    case Kind::Object: os << "object built by "; quoted(v->text); os << " (not executed)"; break;
    case Kind::Storage: os << "storage " << v->storage->type << " '" << v->storage->key << "'"; break;
    case Kind::Tensor: {
      const TensorRef& t = *v->tensor;
      os << "tensor " << t.scalar_type << " [";
      for (size_t i = 0; i < t.size.size(); ++i) os << (i ? ", " : "") << t.size[i];
      os << "]";
      break;
    }
  }
  return os.str();
}

}  // namespace hwaga::pickle
