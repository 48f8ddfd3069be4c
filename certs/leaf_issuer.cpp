#include "certs/leaf_issuer.hpp"

#include <array>
#include <utility>

#include <fmt/format.h>

#include "certs/detail/openssl.hpp"

namespace sbx::certs {

void chain_deleter::operator()(stack_st_X509* chain) const noexcept {
  sk_X509_pop_free(chain, X509_free);
}

namespace {

constexpr long backdate_seconds =
    std::chrono::duration_cast<std::chrono::seconds>(leaf_issuer::backdate).count();
constexpr long lifetime_days =
    std::chrono::duration_cast<std::chrono::days>(leaf_issuer::max_leaf_lifetime).count();
// RFC 5280 appendix A: ub-common-name is 64 characters.
constexpr std::size_t max_common_name = 64;

detail::x509_extension_ptr make_extension(int nid, const char* value) {
  detail::x509_extension_ptr ext{X509V3_EXT_nconf_nid(nullptr, nullptr, nid, value)};
  if (!ext) detail::throw_openssl(fmt::format("cannot encode the leaf extension {}", value));
  return ext;
}

// authorityKeyIdentifier = the CA's subjectKeyIdentifier, or (for a CA that lacks one) the SHA-1
// of its public key, RFC 5280 section 4.2.1.2 method (1). Lets clients pick the right issuer
// when a CA has been rotated and both are in a trust store.
detail::x509_extension_ptr make_authority_key_id(X509* ca) {
  detail::authority_keyid_ptr akid{AUTHORITY_KEYID_new()};
  if (!akid) detail::throw_openssl("cannot encode the authority key identifier");
  if (const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(ca)) {
    akid->keyid = ASN1_OCTET_STRING_dup(ski);
  } else {
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int length = 0;
    if (X509_pubkey_digest(ca, EVP_sha1(), digest.data(), &length) == 1) {
      akid->keyid = ASN1_OCTET_STRING_new();
      if (akid->keyid) ASN1_OCTET_STRING_set(akid->keyid, digest.data(), static_cast<int>(length));
    }
  }
  if (!akid->keyid) detail::throw_openssl("cannot encode the authority key identifier");
  detail::x509_extension_ptr ext{X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid.get())};
  if (!ext) detail::throw_openssl("cannot encode the authority key identifier");
  return ext;
}

detail::general_names_ptr subject_alt_names(std::string_view host, detail::host_kind kind) {
  detail::general_names_ptr names{GENERAL_NAMES_new()};
  detail::general_name_ptr name{GENERAL_NAME_new()};
  if (!names || !name) detail::throw_openssl("cannot encode the subject alternative name");
  if (kind == detail::host_kind::dns_name) {
    ASN1_IA5STRING* dns = ASN1_IA5STRING_new();
    if (!dns || ASN1_STRING_set(dns, host.data(), static_cast<int>(host.size())) != 1) {
      ASN1_IA5STRING_free(dns);
      detail::throw_openssl("cannot encode the subject alternative name");
    }
    GENERAL_NAME_set0_value(name.get(), GEN_DNS, dns);
  } else {
    std::string text{host};
    ASN1_OCTET_STRING* address = a2i_IPADDRESS(text.c_str());
    if (!address) detail::throw_openssl(fmt::format("cannot encode the address {}", host));
    GENERAL_NAME_set0_value(name.get(), GEN_IPADD, address);
  }
  if (sk_GENERAL_NAME_push(names.get(), name.get()) == 0) {
    detail::throw_openssl("cannot encode the subject alternative name");
  }
  name.release();
  return names;
}

// The parts shared by every leaf. Self-signed with the leaf key only so that it can be copied
// (OpenSSL encodes a certificate to copy it); every mint replaces that signature with the CA's.
x509_ptr make_prototype(X509* ca, EVP_PKEY* leaf_key) {
  x509_ptr cert{X509_new()};
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_set_issuer_name(cert.get(), X509_get_subject_name(ca)) != 1 ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) ||
      !X509_gmtime_adj(X509_getm_notAfter(cert.get()), 0) ||
      X509_set_pubkey(cert.get(), leaf_key) != 1) {
    detail::throw_openssl("cannot prepare the leaf certificate");
  }
  // Every leaf has the same key, hence the same subjectKeyIdentifier (RFC 5280 section 4.2.1.2
  // wants one in end-entity certificates too).
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca, cert.get(), nullptr, nullptr, 0);
  detail::x509_extension_ptr key_id{
      X509V3_EXT_nconf_nid(nullptr, &ctx, NID_subject_key_identifier, "hash")};
  if (!key_id || X509_add_ext(cert.get(), key_id.get(), -1) != 1) {
    detail::throw_openssl("cannot add the leaf key identifier");
  }
  for (auto& ext : {make_extension(NID_basic_constraints, "critical,CA:FALSE"),
                    make_extension(NID_key_usage, "critical,digitalSignature"),
                    make_extension(NID_ext_key_usage, "serverAuth"), make_authority_key_id(ca)}) {
    if (X509_add_ext(cert.get(), ext.get(), -1) != 1) {
      detail::throw_openssl("cannot add a leaf extension");
    }
  }
  if (X509_sign(cert.get(), leaf_key, EVP_sha256()) <= 0) {
    detail::throw_openssl("cannot prepare the leaf certificate");
  }
  return cert;
}

}  // namespace

leaf_issuer::leaf_issuer(std::shared_ptr<const certificate_authority> ca) : ca_(std::move(ca)) {
  if (!ca_) throw certs_error("leaf_issuer needs a certificate authority");
  leaf_key_.reset(EVP_EC_gen("P-256"));
  if (!leaf_key_) detail::throw_openssl("cannot generate the leaf key");

  chain_.reset(sk_X509_new_null());
  if (!chain_ || sk_X509_push(chain_.get(), ca_->certificate()) == 0) {
    detail::throw_openssl("cannot build the certificate chain");
  }
  X509_up_ref(ca_->certificate());

  prototype_ = make_prototype(ca_->certificate(), leaf_key_.get());
}

leaf_issuer::~leaf_issuer() = default;

x509_ptr leaf_issuer::mint(std::string_view host) const {
  detail::host_buffer buffer;
  auto normalized = detail::normalize_host(host, buffer);
  detail::host_kind kind =
      normalized ? detail::classify_host(*normalized) : detail::host_kind::invalid;
  if (kind == detail::host_kind::invalid) {
    throw certs_error(
        fmt::format("cannot make a certificate for \"{}\": not a host name or an "
                    "IP address",
                    detail::printable(host)));
  }
  std::string_view name = *normalized;
  X509* ca = ca_->certificate();

  x509_ptr cert{X509_dup(prototype_.get())};
  if (!cert) detail::throw_openssl("cannot create a leaf certificate");
  detail::set_random_serial(cert.get());
  // Clients match the SAN; the CN is only for people reading the certificate, and must be left
  // out when the name exceeds ub-common-name.
  bool has_subject = name.size() <= max_common_name;
  if (has_subject &&
      X509_NAME_add_entry_by_NID(X509_get_subject_name(cert.get()), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(name.data()),
                                 static_cast<int>(name.size()), -1, 0) != 1) {
    detail::throw_openssl("cannot set the leaf subject");
  }

  // The leaf's validity lies inside the CA's: a verifier rejects a leaf outliving its issuer.
  ASN1_TIME* not_before = X509_getm_notBefore(cert.get());
  ASN1_TIME* not_after = X509_getm_notAfter(cert.get());
  if (!X509_gmtime_adj(not_before, -backdate_seconds) ||
      !X509_time_adj_ex(not_after, static_cast<int>(lifetime_days), 0, nullptr)) {
    detail::throw_openssl("cannot set the leaf validity");
  }
  if (ASN1_TIME_compare(not_before, X509_get0_notBefore(ca)) < 0 &&
      X509_set1_notBefore(cert.get(), X509_get0_notBefore(ca)) != 1) {
    detail::throw_openssl("cannot set the leaf validity");
  }
  if (ASN1_TIME_compare(not_after, X509_get0_notAfter(ca)) > 0 &&
      X509_set1_notAfter(cert.get(), X509_get0_notAfter(ca)) != 1) {
    detail::throw_openssl("cannot set the leaf validity");
  }

  // RFC 5280 section 4.2.1.6: with an empty subject the SAN extension must be critical.
  auto names = subject_alt_names(name, kind);
  if (X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, names.get(), has_subject ? 0 : 1,
                        X509V3_ADD_DEFAULT) != 1) {
    detail::throw_openssl("cannot add the subject alternative name");
  }

  if (X509_sign(cert.get(), ca_->private_key(), EVP_sha256()) <= 0) {
    detail::throw_openssl(fmt::format("cannot sign the leaf for {}", name));
  }
  // Fills OpenSSL's per-certificate extension cache now, before threads share the certificate.
  X509_check_purpose(cert.get(), -1, 0);
  return cert;
}

}  // namespace sbx::certs
