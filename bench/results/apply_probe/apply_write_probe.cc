// 794 random 520-byte writes (a -P 16 epoch of 1 KiB SETs) into a 1 GiB MAP_SHARED memfd mapping, with prefetch distance 0/2/4/8.
// g++ -O2 -o /tmp/pf apply_write_probe.cc && /tmp/pf
#include <sys/mman.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <random>
#include <chrono>
#include <vector>
#include <algorithm>
int main(int argc,char**argv){
  size_t G=1ull<<30; int shared=1;
  int fd=memfd_create("x",0); ftruncate(fd,G);
  char* img=(char*)mmap(nullptr,G,PROT_READ|PROT_WRITE,MAP_SHARED,fd,0); memset(img,1,G);
  std::vector<char> stage(8<<20,2);
  std::mt19937_64 r(1);
  for (int dist : {0,2,4,8}) {
   std::vector<double> ts;
   for(int rep=0;rep<200;rep++){
    std::vector<uint64_t> offs(794); for(auto&o:offs) o=(r()%(G-4096))&~63ull;
    std::sort(offs.begin(),offs.end());
    // flush caches roughly: touch 32 MiB elsewhere
    static std::vector<char> junk(32<<20); memset(junk.data(),rep,junk.size());
    auto t0=std::chrono::steady_clock::now();
    size_t so=0;
    for(size_t i=0;i<offs.size();i++){
      if(dist) { size_t j=i+dist; if(j<offs.size()){ __builtin_prefetch(img+offs[j],1); __builtin_prefetch(img+offs[j]+512,1);} }
      memcpy(img+offs[i], stage.data()+so, 520); so+=520;
    }
    auto t1=std::chrono::steady_clock::now();
    ts.push_back(std::chrono::duration<double,std::micro>(t1-t0).count());
   }
   std::sort(ts.begin(),ts.end()); printf("prefetch dist %d: p50 %.1f us p90 %.1f\n",dist,ts[ts.size()/2],ts[ts.size()*9/10]);
  }
}
