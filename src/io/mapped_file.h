// A read-only POSIX memory map of a whole file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace turbokv::io {

class MappedFile {
 public:
  // Maps `path` read-only; throws Error naming the file if it cannot be
  // opened or mapped. An empty file maps to data() == nullptr, size() == 0.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  // Gives up ownership of the mapping (for owners that keep the raw
  // pointer); the caller must later pass both values to unmap().
  void detach() { data_ = nullptr; size_ = 0; }
  static void unmap(const uint8_t* data, size_t size);

 private:
  void release();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace turbokv::io
