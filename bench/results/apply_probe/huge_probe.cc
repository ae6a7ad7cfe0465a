// The same writes into 1 GiB of anonymous memory, without and with MADV_HUGEPAGE (how much is TLB).
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
  size_t G=1ull<<30;
  for (int huge : {0,1}) {
  char* img=(char*)mmap(nullptr,G,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(img,G,huge?MADV_HUGEPAGE:MADV_NOHUGEPAGE); memset(img,1,G);
  std::vector<char> stage(8<<20,2);
  std::mt19937_64 r(1);
   std::vector<double> ts;
   for(int rep=0;rep<200;rep++){
    std::vector<uint64_t> offs(794); for(auto&o:offs) o=(r()%(G-4096))&~63ull;
    std::sort(offs.begin(),offs.end());
    static std::vector<char> junk(32<<20); memset(junk.data(),rep,junk.size());
    auto t0=std::chrono::steady_clock::now();
    size_t so=0;
    for(size_t i=0;i<offs.size();i++){ memcpy(img+offs[i], stage.data()+so, 520); so+=520; }
    auto t1=std::chrono::steady_clock::now();
    ts.push_back(std::chrono::duration<double,std::micro>(t1-t0).count());
   }
   std::sort(ts.begin(),ts.end()); printf("huge %d: p50 %.1f us p90 %.1f\n",huge,ts[ts.size()/2],ts[ts.size()*9/10]);
   munmap(img,G);
  }
}
