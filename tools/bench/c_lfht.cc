// File: c_lfht.cc -- liburcu's lock-free resizable hash table (cds_lfht) with
// the urcu-memb flavour (read lock = a thread-local counter store; benchmark
// threads register).  A store to an existing key overwrites the node's value
// atomically in place (what a user does for a scalar value); a new key gets a
// node through cds_lfht_add_unique; deletes free nodes through call_rcu.

#define _LGPL_SOURCE 1
#include <urcu/urcu-memb.h>
#include <urcu/rculfhash.h>

#include <atomic>
#include <vector>

#include "workload.h"

namespace bench {
namespace {

struct Node {
  cds_lfht_node node;
  uint64_t key;
  std::atomic<uint64_t> value;
  rcu_head rcu;
};

inline unsigned long HashKey(uint64_t k) {  // murmur3 fmix64
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return static_cast<unsigned long>(k);
}

int Match(cds_lfht_node* n, const void* key) {
  return caa_container_of(n, Node, node)->key == *static_cast<const uint64_t*>(key);
}

void FreeNode(rcu_head* h) { delete caa_container_of(h, Node, rcu); }

unsigned long Pow2Ceil(size_t n) {
  unsigned long p = 1;
  while (p < n) p <<= 1;
  return p;
}

struct LfhtMap {
  cds_lfht* ht;

  explicit LfhtMap(size_t n)
      : ht(cds_lfht_new_flavor(Pow2Ceil(n), 1, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
                               &urcu_memb_flavor, nullptr)) {}
  ~LfhtMap() {
    std::vector<Node*> all;
    urcu_memb_read_lock();
    cds_lfht_iter it;
    Node* n;
    cds_lfht_for_each_entry(ht, &it, n, node) {
      if (cds_lfht_del(ht, &n->node) == 0) all.push_back(n);
    }
    urcu_memb_read_unlock();
    urcu_memb_synchronize_rcu();
    for (Node* x : all) delete x;
    cds_lfht_destroy(ht, nullptr);
  }

  uint64_t Find(uint64_t k) {
    urcu_memb_read_lock();
    cds_lfht_iter it;
    cds_lfht_lookup(ht, HashKey(k), Match, &k, &it);
    cds_lfht_node* n = cds_lfht_iter_get_node(&it);
    const uint64_t v =
        n ? caa_container_of(n, Node, node)->value.load(std::memory_order_acquire) : kMiss;
    urcu_memb_read_unlock();
    return v;
  }
  void Store(uint64_t k, uint64_t v) {
    const unsigned long h = HashKey(k);
    urcu_memb_read_lock();
    cds_lfht_iter it;
    cds_lfht_lookup(ht, h, Match, &k, &it);
    cds_lfht_node* n = cds_lfht_iter_get_node(&it);
    if (n == nullptr) {
      Node* fresh = new Node{{}, k, {v}, {}};
      n = cds_lfht_add_unique(ht, h, Match, &k, &fresh->node);
      if (n == &fresh->node) {
        urcu_memb_read_unlock();
        return;
      }
      delete fresh;  // lost a race: overwrite the winner
    }
    caa_container_of(n, Node, node)->value.store(v, std::memory_order_release);
    urcu_memb_read_unlock();
  }
  void Preload(uint64_t k, uint64_t v) { Store(k, v); }
  void Erase(uint64_t k) {
    urcu_memb_read_lock();
    cds_lfht_iter it;
    cds_lfht_lookup(ht, HashKey(k), Match, &k, &it);
    cds_lfht_node* n = cds_lfht_iter_get_node(&it);
    if (n != nullptr && cds_lfht_del(ht, n) == 0) {
      urcu_memb_call_rcu(&caa_container_of(n, Node, node)->rcu, FreeNode);
    }
    urcu_memb_read_unlock();
  }
  void Ready() {}
  static void ThreadEnter() { urcu_memb_register_thread(); }
  static void ThreadExit() { urcu_memb_unregister_thread(); }
  static void Quiesce() { urcu_memb_barrier(); }
};

}  // namespace

const Contender kLfhtContender = {"lfht", &RunBench<LfhtMap>, &MeasureMemory<LfhtMap>};

}  // namespace bench
