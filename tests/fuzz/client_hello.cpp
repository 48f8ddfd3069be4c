// The TLS ClientHello reader of CONNECT tunnels (proxy/client_hello.hpp): the first bytes a client
// sends into a tunnel. Properties: a server name it reports is lower case, not empty, without a
// trailing dot; every proper prefix of a complete ClientHello answers need_more (the proxy reads on
// and never decides on part of a message); bytes behind a complete ClientHello change nothing; a
// verdict on a prefix (not_tls, malformed) stands when more bytes follow; need_more is never the
// answer past client_hello_max_bytes.
#include <cstdint>
#include <string>

#include "proxy/client_hello.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::proxy;
using sbx::fuzz::require;
using status = client_hello_result::status;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto bytes = sbx::fuzz::as_text(data, size);
  const auto r = parse_client_hello(bytes);
  if (r.state == status::need_more) {
    require(size <= client_hello_max_bytes, "need_more is bounded by client_hello_max_bytes");
    return 0;
  }
  if (r.state == status::ok && r.sni) {
    require(!r.sni->empty() && !r.sni->ends_with('.'), "SNI is not empty, no trailing dot");
    for (char c : *r.sni)
      require(!(c >= 'A' && c <= 'Z'), "SNI is lower case");
  }

  // More bytes behind it (the next records, or a pipelined request) do not change the answer.
  const auto longer = parse_client_hello(std::string(bytes) + "\x17\x03\x03\x00\x01x");
  require(longer.state == r.state, "bytes behind the first flight do not change the verdict");
  if (r.state == status::ok) require(longer.sni == r.sni, "bytes behind do not change the SNI");

  // Every proper prefix of a complete ClientHello asks for more (some prefixes of long inputs).
  if (r.state == status::ok) {
    const std::size_t step = size < 256 ? 1 : size / 97 + 1;
    for (std::size_t n = 0; n < size; n += step) {
      const auto part = parse_client_hello(bytes.substr(0, n));
      if (part.state != status::need_more) {
        // The complete message may end before the input does: past its end a prefix may be ok.
        require(part.state == status::ok && part.sni == r.sni,
                "a prefix of a ClientHello is need_more (or already the same ClientHello)");
      }
    }
  }
  return 0;
}
