// kill -9 -> exit (pidfd) of a child holding N MiB of a memfd mapped MAP_PRIVATE: mode 0 read
// (image pages mapped), 1 written (private copies), 2 written then MADV_DONTNEED.
// g++ -O2 -o /tmp/exit_probe exit_probe.cc && /tmp/exit_probe 3700 0
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <time.h>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <cstdlib>
static uint64_t now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000ull+t.tv_nsec;}
int main(int argc,char**argv){
  size_t total = (size_t)atoi(argv[1])<<20; int mode=atoi(argv[2]); // 0 read (file pte), 1 write (anon cow), 2 write then DONTNEED (no pte)
  int fd = memfd_create("img",0); ftruncate(fd,total);
  char* sh=(char*)mmap(nullptr,total,PROT_READ|PROT_WRITE,MAP_SHARED,fd,0); memset(sh,1,total); munmap(sh,total);
  int pp[2]; pipe(pp);
  pid_t c=fork();
  if(c==0){ char* p=(char*)mmap(nullptr,total,PROT_READ|PROT_WRITE,MAP_PRIVATE,fd,0); volatile char s=0;
    for(size_t i=0;i<total;i+=4096){ if(mode==0) s+=p[i]; else p[i]=2; }
    if(mode==2) madvise(p,total,MADV_DONTNEED);
    write(pp[1],"x",1); pause(); }
  char b; read(pp[0],&b,1);
  int pfd=syscall(SYS_pidfd_open,c,0);
  uint64_t t0=now(); kill(c,SIGKILL); pollfd q{pfd,POLLIN,0}; poll(&q,1,10000); uint64_t t1=now();
  printf("%zu MiB mode %d: kill->exit %.1f ms\n", total>>20, mode, (t1-t0)/1e6);
  waitpid(c,nullptr,0);
}
